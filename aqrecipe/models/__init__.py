"""Model sources: Hugging Face folders (through llama.cpp's converter) and GGUF files, read lazily.

``import aqrecipe.models`` does not import torch; converting a folder does.
"""

from aqrecipe.models.architectures import ArchInfo
from aqrecipe.models.demo import demo_dir, materialize_demo
from aqrecipe.models.source import ModelSource, TensorInfo, open_folder, open_model
from aqrecipe.models.tensor_names import hf_layer_of, layer_of, role_of

__all__ = ["ArchInfo", "ModelSource", "TensorInfo", "demo_dir", "hf_layer_of", "layer_of", "materialize_demo",
           "open_folder", "open_model", "role_of"]
