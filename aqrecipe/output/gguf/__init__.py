"""GGUF output: the source's metadata (hyperparameters, tokenizer) and tensors streamed to disk atomically."""

from aqrecipe.formats.fileio import atomic_path, check_output_folder
from aqrecipe.output.gguf.writer import PlannedTensor, PlannedTensorLike, guess_file_type, write_gguf

__all__ = [
    "PlannedTensor",
    "PlannedTensorLike",
    "atomic_path",
    "check_output_folder",
    "guess_file_type",
    "write_gguf",
]
