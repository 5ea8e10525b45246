"""GGUF output: hyperparameters, tokenizer and tensors streamed to disk atomically."""

from aqrecipe.formats.fileio import atomic_path, check_output_folder
from aqrecipe.output.gguf.tokenizer import add_tokenizer, build_vocab
from aqrecipe.output.gguf.writer import PlannedTensor, PlannedTensorLike, guess_file_type, write_gguf

__all__ = [
    "PlannedTensor",
    "PlannedTensorLike",
    "add_tokenizer",
    "atomic_path",
    "build_vocab",
    "check_output_folder",
    "guess_file_type",
    "write_gguf",
]
