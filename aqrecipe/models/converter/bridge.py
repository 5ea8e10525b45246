"""Run llama.cpp's converter on a Hugging Face folder without writing anything.

The converter (``conversion.ModelBase`` subclasses of the pinned bundle) is driven the way
``convert_hf_to_gguf.py`` drives it, with its lazy tensors: ``prepare_tensors`` and
``prepare_metadata`` fill an in-memory ``gguf.GGUFWriter`` with every tensor *as a graph* (names,
shapes, q/k permutations, fused or split tensors, norm offsets: all llama.cpp's) and every
metadata key (hyperparameters, rope, sliding window, tokenizer, chat template). Nothing is
computed until a tensor is read; each read evaluates a fresh copy of the pristine graph, so
reading one tensor holds one tensor and the table stays reusable.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqrecipe.errors import ModelError, UnsupportedArchitectureError
from aqrecipe.models.converter.bundle import CONVERTER_VERSION, ConverterError, require_bundle
from aqrecipe.optional import require_torch

log = logging.getLogger(__name__)

#: What needs torch here (the converter's lazy tensors are torch tensors on the meta device).
CONVERSION = "reading a Hugging Face folder through llama.cpp's converter"
#: Keys the writer sets itself for every output file.
WRITER_KEYS = ("general.file_type", "general.quantization_version")


@dataclass(frozen=True)
class ConvertedTensor:
    """One GGUF tensor of the conversion: shape in numpy order and the HF tensors it comes from."""

    gguf_name: str
    shape: tuple[int, ...]
    hf_sources: tuple[str, ...]


def _conversion_module() -> Any:
    """The bundle's ``conversion`` package, imported once (torch and the bundle required)."""
    require_torch(CONVERSION)
    folder = require_bundle()
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    import conversion  # the bundle's package: llama.cpp's per-architecture converters

    # The converter's own progress and warnings are for its CLI; aqrecipe reports what matters.
    for name in ("hf-to-gguf", "gguf.gguf_writer", "gguf.vocab", "gguf.metadata"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return conversion


def supported_architectures() -> tuple[str, ...]:
    """Every HF ``architectures`` class llama.cpp's converter turns into a text model."""
    return tuple(sorted(_conversion_module().TEXT_MODEL_MAP))


def _fresh(value: Any) -> Any:
    """A copy of a lazy graph that has not been evaluated (gguf.LazyBase caches results in place)."""
    import gguf

    if isinstance(value, gguf.LazyBase):
        copy = object.__new__(type(value))
        copy.__dict__.update(value.__dict__)
        copy._data = None
        copy._args = _fresh(value._args)
        copy._kwargs = {k: _fresh(v) for k, v in value._kwargs.items()} if value._kwargs else value._kwargs
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    return value


@contextlib.contextmanager
def _converter_errors(folder: Path) -> Iterator[None]:
    """Turn what the converter raises on a model it cannot convert into a ModelError with context."""
    try:
        yield
    except ModelError:
        raise
    except NotImplementedError as exc:
        raise ConverterError(
            f"llama.cpp's converter (llama-cpp-python {CONVERTER_VERSION}) cannot convert {folder}: {exc}",
            hint="the converter names what it does not support (an architecture, a tokenizer it does not "
            "recognise, a weight format); `aqrecipe inspect --supported` lists the architectures it converts, "
            "and a GGUF of the model made by a newer llama.cpp can be given as the model instead",
        ) from None
    except (ValueError, KeyError, TypeError, AssertionError, IndexError, FileNotFoundError, OSError) as exc:
        raise ModelError(
            f"llama.cpp's converter failed on {folder}: {type(exc).__name__}: {exc}",
            hint="the folder's config.json, tokenizer files or weights are damaged or do not belong together",
        ) from None


def unsupported_architecture(folder: Path, architecture: str, hparams: Mapping[str, Any]) -> UnsupportedArchitectureError:
    """The error for an architecture llama.cpp's converter does not know, naming what it does know."""
    from aqrecipe.models.support import TESTED_FAMILIES

    model_type = hparams.get("model_type")
    shown = f"{architecture} (model_type {model_type!r})" if model_type else architecture
    tested = ", ".join(f.hf_architecture for f in TESTED_FAMILIES)
    return UnsupportedArchitectureError(
        f"unsupported model architecture: {shown} in {folder}: llama.cpp's converter "
        f"(llama-cpp-python {CONVERTER_VERSION}) does not convert it",
        hint=f"it converts {len(supported_architectures())} architectures (`aqrecipe inspect --supported` lists "
        f"them; tested end to end here: {tested}); a GGUF file of the model made by a newer llama.cpp "
        "can be given as the model instead",
    )


class _Run:
    """One instance of llama.cpp's model class with its tensors prepared (lazily) and, if asked, its metadata."""

    def __init__(self, folder: Path, hparams: dict[str, Any], *, with_vocab: bool) -> None:
        conversion = _conversion_module()
        import gguf

        self.folder = folder
        self.sources: dict[str, list[str]] = {}
        with _converter_errors(folder), contextlib.redirect_stdout(io.StringIO()):
            self.hf_architecture = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
            if self.hf_architecture not in conversion.TEXT_MODEL_MAP:
                raise unsupported_architecture(folder, self.hf_architecture, hparams)
            model_class = conversion.get_model_class(self.hf_architecture)
            self.model = model = model_class(folder, gguf.LlamaFileType.ALL_F32, folder / "unused.gguf",
                                             hparams=copy.deepcopy(hparams))
            self._record_sources(model)
            model.prepare_tensors()
            if with_vocab:
                model.prepare_metadata(vocab_only=False)
            else:
                model.set_gguf_parameters()  # the hyperparameters without the (slow) tokenizer
        writer = model.gguf_writer
        self.lazy: dict[str, Any] = {name: info.tensor for name, info in writer.tensors[0].items()}
        self.tensors = tuple(
            ConvertedTensor(name, tuple(int(d) for d in info.shape), tuple(self.sources.get(name, ())))
            for name, info in writer.tensors[0].items()
        )
        self.metadata: dict[str, gguf.GGUFValue] = {
            key: value for key, value in writer.kv_data[0].items() if key not in WRITER_KEYS
        }

    def _record_sources(self, model: Any) -> None:
        """Wrap the instance's modify_tensors to note which HF tensors each GGUF tensor came from.

        The converter buffers a layer's per-expert tensors (their calls yield nothing) and yields the
        merged tensor from a later call, with other tensors' calls in between when the experts are
        spread over shards. Each per-expert tensor waits under the name the converter's own name map
        gives its expert-less name (``...experts.3.w2.weight`` -> ``...experts.w2.weight`` ->
        ``blk.N.ffn_down_exps.weight``) until that tensor is yielded; every other tensor's source is
        the call that yielded it.
        """
        original = model.modify_tensors
        waiting: dict[str, list[str]] = {}  # merged GGUF name -> its per-expert HF tensors seen so far

        def modify_tensors(data: Any, name: str, bid: int | None) -> Iterator[tuple[str, Any]]:
            target = _merged_name(model, name)
            if target is not None:
                waiting.setdefault(target, []).append(name)
            for new_name, tensor in original(data, name, bid):
                self.sources.setdefault(new_name, []).extend(waiting.pop(new_name, None) or [name])
                yield new_name, tensor

        model.modify_tensors = modify_tensors


_EXPERT_INDEX = re.compile(r"\.experts\.\d+\.")


def _merged_name(model: Any, hf_name: str) -> str | None:
    """The GGUF name the converter gives the merged tensor of a per-expert HF tensor, or None."""
    if not _EXPERT_INDEX.search(hf_name):
        return None
    try:
        return str(model.map_tensor_name(_EXPERT_INDEX.sub(".experts.", hf_name, count=1)))
    except Exception:  # the converter's map does not know it: not a routed-expert tensor
        return None


class Conversion:
    """A lazy conversion of an HF folder: the GGUF tensor table and metadata, tensors on demand.

    The table and hyperparameters come from the cache (:mod:`.table`) when this folder was
    converted before; the converter itself runs only when tensor data or the full metadata
    (tokenizer included) is asked for.
    """

    def __init__(self, folder: Path, *, hparams: dict[str, Any], table_key: str) -> None:
        from aqrecipe.models.converter.table import load_table, save_table

        self.folder = folder
        self._hparams = hparams
        self._full: _Run | None = None
        cached = load_table(table_key)
        if cached is None:
            run = _Run(folder, hparams, with_vocab=False)
            save_table(table_key, run.tensors, run.metadata, run.hf_architecture)
            cached = ([(t.gguf_name, t.shape, t.hf_sources) for t in run.tensors], run.metadata, run.hf_architecture)
        rows, self.arch_metadata, self.hf_architecture = cached
        self.tensors: tuple[ConvertedTensor, ...] = tuple(ConvertedTensor(*row) for row in rows)

    def _run(self) -> _Run:
        if self._full is None:
            self._full = _Run(self.folder, self._hparams, with_vocab=True)
            if sorted(t.gguf_name for t in self._full.tensors) != sorted(t.gguf_name for t in self.tensors):
                raise ModelError(
                    f"llama.cpp's converter gave {self.folder} another tensor table than the cached one",
                    hint="delete ~/.cache/aqrecipe/converted/ and run again",
                )
        return self._full

    @property
    def metadata(self) -> dict[str, Any]:
        """Every key llama.cpp's converter writes, tokenizer and chat template included (runs it once)."""
        return self._run().metadata

    def read(self, gguf_name: str) -> np.ndarray:
        """One GGUF tensor as float32 (a fresh evaluation; nothing stays cached)."""
        import gguf

        lazy = self._run().lazy[gguf_name]
        with _converter_errors(self.folder):
            values = gguf.LazyNumpyTensor.to_eager(_fresh(lazy)) if isinstance(lazy, gguf.LazyBase) else lazy
        return np.asarray(values, dtype=np.float32)

    def convert_values(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the converter on replacement HF tensors (e.g. smoothed ones): GGUF name -> float32.

        Only the given HF tensors are converted; the result holds every GGUF tensor they feed.
        """
        import gguf
        import torch

        run = self._run()
        model = run.model
        saved_tensors, saved_writer = model.model_tensors, model.gguf_writer.tensors
        model.model_tensors = {name: (lambda v=v: torch.from_numpy(np.asarray(v, dtype=np.float32)))
                               for name, v in values.items()}
        model.gguf_writer.tensors = [{}]
        try:
            with _converter_errors(self.folder), contextlib.redirect_stdout(io.StringIO()):
                model.prepare_tensors()
            out = {}
            for name, info in model.gguf_writer.tensors[0].items():
                if any(src in values for src in run.sources.get(name, ())):
                    data = info.tensor
                    data = gguf.LazyNumpyTensor.to_eager(data) if isinstance(data, gguf.LazyBase) else data
                    out[name] = np.asarray(data, dtype=np.float32)
            return out
        finally:
            model.model_tensors, model.gguf_writer.tensors = saved_tensors, saved_writer
