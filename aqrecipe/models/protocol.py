"""``WeightSource``: what the stages above read from a model (:class:`~aqrecipe.models.ModelSource` is one).

The calibration runner, the planner, SmoothQuant, super-weight detection and the writers
take a source through this Protocol, so a test (or another container format) can hand them
any object with these members.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from aqrecipe.models.architectures import ArchInfo
from aqrecipe.models.source import TensorInfo


@runtime_checkable
class WeightSource(Protocol):
    """An opened model: its folder and config, the tensor table, tensors read on demand."""

    path: Path  # the HF folder (config.json, the tokenizer, the safetensors)
    config: dict[str, Any]  # config.json
    arch: ArchInfo
    tensors: tuple[TensorInfo, ...]  # in model order

    def tensor(self, name: str) -> TensorInfo:
        """A tensor's entry by HF or GGUF name."""
        ...

    def read(self, name: str) -> np.ndarray:
        """A tensor as float32 in HF orientation [out, in]."""
        ...

    def read_for_gguf(self, name: str) -> np.ndarray:
        """A tensor as float32 with llama.cpp's conversion transforms applied."""
        ...

    def fingerprint(self) -> str:
        """A stable hash of the config and the tensor headers (checkpoint and cache keys)."""
        ...

    @property
    def tokenizer_dir(self) -> Path | None:
        """The folder holding the HF tokenizer files, or None."""
        ...


#: What the entry points accept as a model: "demo", an HF folder, or an opened source.
ModelRef = Union[str, os.PathLike[str], WeightSource]
