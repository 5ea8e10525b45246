"""Model sources: Hugging Face folders read lazily, the demo model, GGUF names.

``import aqrecipe.models`` does not import torch; only materialising the demo
model does.
"""

from aqrecipe.models.architectures import ARCHITECTURES, ArchInfo, supported_model_types
from aqrecipe.models.demo import demo_dir, materialize_demo
from aqrecipe.models.source import ModelSource, TensorInfo, open_folder, open_model
from aqrecipe.models.tensor_names import hf_layer_of, layer_of, permute_rope_rows, role_of, unpermute_rope_rows

__all__ = [
    "ARCHITECTURES",
    "ArchInfo",
    "ModelSource",
    "TensorInfo",
    "demo_dir",
    "hf_layer_of",
    "layer_of",
    "materialize_demo",
    "open_folder",
    "open_model",
    "permute_rope_rows",
    "role_of",
    "supported_model_types",
    "unpermute_rope_rows",
]
