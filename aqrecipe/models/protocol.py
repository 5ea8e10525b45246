"""``WeightSource``: what the stages above read from a model, whatever form it came in.

Two kinds of source satisfy it: a Hugging Face folder converted on the fly by llama.cpp's own
``convert_hf_to_gguf.py`` logic (:mod:`aqrecipe.models.converter`), and a GGUF file
(:mod:`aqrecipe.models.gguf_source`). Either way the tensor table is llama.cpp's: GGUF names,
GGUF shapes (numpy order ``[rows, row_len]``), and the metadata llama.cpp reads (hyperparameters,
tokenizer, chat template) as ``gguf.GGUFValue`` entries the writer copies into every output.

The torch stages (calibration, SmoothQuant, super weights, simulated evaluation) also need the
Hugging Face side: ``hf_folder`` (None for GGUF input: those stages refuse with a message naming
the stage), ``read(hf_name)`` in HF orientation, and ``gguf_names_of(hf_name)`` to key their
results by GGUF name (a fused HF tensor may feed several GGUF tensors and the reverse).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import gguf
import numpy as np

from aqrecipe.models.architectures import ArchInfo
from aqrecipe.models.tensor_table import TensorInfo


@runtime_checkable
class WeightSource(Protocol):
    """An opened model: its tensor table in llama.cpp's terms, tensors read on demand."""

    path: Path  # what the user named: the HF folder or the (first) GGUF file
    config: dict[str, Any]  # HF config.json; {} for GGUF input
    arch: ArchInfo
    tensors: tuple[TensorInfo, ...]  # the GGUF tensors to write, in llama.cpp's order

    def tensor(self, name: str) -> TensorInfo:
        """A tensor's entry by GGUF name (or, for HF folders, by the HF name that feeds it)."""
        ...

    def read_for_gguf(self, name: str) -> np.ndarray:
        """A GGUF tensor as float32, shaped as ``tensor(name).shape``, exactly as llama.cpp's converter makes it."""
        ...

    def read(self, hf_name: str) -> np.ndarray:
        """An HF tensor as float32 in HF orientation (torch stages only; HF folders only)."""
        ...

    def gguf_names_of(self, hf_name: str) -> tuple[str, ...]:
        """The GGUF tensors an HF tensor feeds (empty if the converter drops it)."""
        ...

    def gguf_metadata(self) -> Mapping[str, gguf.GGUFValue]:
        """Every key llama.cpp reads (general.*, <arch>.*, tokenizer.*), less file type and quantization version."""
        ...

    def fingerprint(self) -> str:
        """A stable hash of the metadata and the tensor table (checkpoint and cache keys)."""
        ...

    @property
    def hf_folder(self) -> Path | None:
        """The Hugging Face folder the torch stages load, or None (GGUF input)."""
        ...

    @property
    def weight_files(self) -> tuple[Path, ...]:
        """The files holding the tensors' bytes (safetensors shards, or the GGUF parts), in order."""
        ...

    @property
    def tokenizer_dir(self) -> Path | None:
        """The folder holding the HF tokenizer files, or None."""
        ...


#: What the entry points accept as a model: "demo", an HF folder, a GGUF file, or an opened source.
ModelRef = Union[str, os.PathLike[str], WeightSource]
