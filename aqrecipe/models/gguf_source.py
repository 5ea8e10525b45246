"""GGUFSource: a GGUF file (F32, F16, BF16; one file or llama.cpp's split parts) as a model.

Opening reads only the header: the bounded scan of :mod:`aqrecipe.formats.gguf_read` checks every
length, count, type id and tensor extent against the file size first, then the values are decoded
here. gguf-py's ``GGUFReader`` is not used for the header: it builds several numpy views per
vocabulary string and takes tens of seconds on a 128k-token vocabulary (22 s measured), while
``compile`` must stay well under a second. Tensor data is memory-mapped on the first read.

The tensor table is llama.cpp's already (GGUF names, numpy shapes ``[rows, row_len]``); it is put
in :func:`~aqrecipe.models.tensor_names.gguf_order_key` order, the order an HF folder's table has,
so the same model gives the same plan, and the same output tensor order, whichever form it came in.

An already quantized file is refused (AQ312): quantizing it again compounds the rounding error of
both quantizations. ``allow_requantize`` (``--allow-requantize``, as llama-quantize) accepts it and
dequantizes on read with ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from aqrecipe.errors import GGUFFormatError, ModelError
from aqrecipe.formats.gguf_read import check_gguf
from aqrecipe.models.architectures import ArchInfo, arch_info_from_metadata
from aqrecipe.models.tensor_table import TensorInfo, check_shapes, gguf_keys
from aqrecipe.models.tensor_names import gguf_order_key

log = logging.getLogger(__name__)

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType

#: Tensor types read as they are; any other type is a quantized (or integer) tensor.
FLOAT_TYPES = frozenset({QT.F32, QT.F16, QT.BF16})

#: Keys not carried into outputs. The writer sets file type and quantization version itself;
#: general.alignment must not be copied because the writer pads to its own alignment (a copied
#: 64 over 32-byte padding would misplace every tensor for llama.cpp); split keys describe the
#: input's parts, not the output.
DROPPED_KEYS = frozenset({
    "general.file_type", "general.quantization_version", "general.alignment",
    "split.no", "split.count", "split.tensors.count",
})
#: Key families that describe how the input itself was quantized (llama-quantize's imatrix
#: record, an earlier aqrecipe run's recipe and plan hash): stale for anything written from it.
DROPPED_PREFIXES = ("GGUF.", "quantize.imatrix.", "aqrecipe.")

REQUANTIZE_CODE = "AQ312"
HF_ONLY_CODE = "AQ313"

# files already warned about: compile and apply both open the model, one warning per file is enough
_warned_requantize: set[Path] = set()

_SCALAR_FORMATS = {VT.UINT8: "B", VT.INT8: "b", VT.UINT16: "H", VT.INT16: "h", VT.UINT32: "I",
                   VT.INT32: "i", VT.FLOAT32: "f", VT.BOOL: "?", VT.UINT64: "Q", VT.INT64: "q",
                   VT.FLOAT64: "d"}
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
_DEFAULT_ALIGNMENT = 32


# --- the header -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _RawTensor:
    """One tensor info of a file: where its bytes are (absolute offset) and how to read them."""

    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: GGUF's ne reversed
    offset: int  # from the start of the file
    nbytes: int


@dataclass(frozen=True)
class _Header:
    """What one GGUF file's header says: byte order, metadata and tensor infos."""

    path: Path
    order: str  # struct byte order, "<" or ">"
    metadata: dict[str, gguf.GGUFValue]
    tensors: tuple[_RawTensor, ...]


@dataclass(frozen=True)
class PackedStrings:
    """A string array as the file stores it (u64 length, bytes; each item), decoded on demand.

    Decoding a 128k-token vocabulary and its 280k merges took longer than the rest of opening a
    70B-shaped header; compile never reads them, only the writer copying the metadata does.
    """

    data: bytes
    count: int
    order: str  # struct byte order of the lengths

    def __len__(self) -> int:
        return self.count

    def decode(self) -> list[str | bytes]:
        """The strings; an item that is not UTF-8 stays bytes (the writer re-emits bytes as they are)."""
        data, pos, unpack = self.data, 0, struct.Struct(self.order + "Q").unpack_from
        raw = []
        for _ in range(self.count):
            (n,) = unpack(data, pos)
            raw.append(data[pos + 8 : pos + 8 + n])
            pos += 8 + n
        try:
            return [item.decode("utf-8") for item in raw]
        except UnicodeDecodeError:  # rare: decode one by one
            return [_text_or_bytes(item) for item in raw]


def _decoded(value: gguf.GGUFValue) -> gguf.GGUFValue:
    """``value`` with a packed string array decoded into a list."""
    if isinstance(value.value, PackedStrings):
        return gguf.GGUFValue(value.value.decode(), value.type, value.sub_type)
    return value


class _Decoder:
    """Reads values from a header the bounded scan has already checked (so no count can run away)."""

    def __init__(self, buf: Any, order: str) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str | bytes:
        """A string; raw bytes when it is not UTF-8 (the writer re-emits bytes as they are)."""
        n = self.unpack("Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return _text_or_bytes(raw)

    def packed_strings(self, count: int) -> PackedStrings:
        """``count`` strings, kept as stored: only their end is found (one tight loop)."""
        buf, start, unpack = self.buf, self.pos, struct.Struct(self.order + "Q").unpack_from
        pos = start
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        return PackedStrings(bytes(buf[start:pos]), count, self.order)

    def value(self, vtype: gguf.GGUFValueType, *, lazy: bool = True) -> gguf.GGUFValue:
        """One metadata value, typed as the file types it (arrays keep their item type).

        A string array is a :class:`PackedStrings` when ``lazy`` (a vocabulary, its merges).
        """
        if vtype in _SCALAR_FORMATS:
            return gguf.GGUFValue(self.unpack(_SCALAR_FORMATS[vtype]), vtype)
        if vtype == VT.STRING:
            return gguf.GGUFValue(self.string(), vtype)
        sub_type = VT(self.unpack("I"))
        count = self.unpack("Q")
        if sub_type in _SCALAR_FORMATS:
            dtype = np.dtype(self.order + _SCALAR_FORMATS[sub_type])
            # one vectorised read: token types and scores of a large vocabulary are 100k+ items
            items = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
            self.pos += count * dtype.itemsize
        elif sub_type == VT.STRING:
            packed = self.packed_strings(count)
            items = packed if lazy else packed.decode()
        else:  # nested arrays: gguf-py's writer infers the inner item types again
            items = [self.value(sub_type, lazy=False).value for _ in range(count)]
        return gguf.GGUFValue(items, VT.ARRAY, sub_type)


def _text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _read_header(path: Path) -> _Header:
    """Check ``path`` with the bounded scan, then decode its metadata and tensor infos."""
    check_gguf(path)  # GGUFFormatError naming what is damaged (truncation, counts, type ids)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _decode_header(path, buf)
    except (struct.error, ValueError, IndexError) as exc:  # the scan passed: should not happen
        raise GGUFFormatError(f"{path} is not a readable GGUF file: {type(exc).__name__}: {exc}",
                              hint="the file is truncated or damaged; re-download or re-create it") from None


def _decode_header(path: Path, buf: Any) -> _Header:
    order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # as the scan decides it
    d = _Decoder(buf, order)
    d.pos = 8
    n_tensors, n_kv = d.unpack("Q"), d.unpack("Q")
    metadata: dict[str, gguf.GGUFValue] = {}
    for _ in range(n_kv):
        key = d.string()
        metadata[str(key)] = d.value(VT(d.unpack("I")))
    infos = []
    for _ in range(n_tensors):
        name = str(d.string())
        dims = [d.unpack("Q") for _ in range(d.unpack("I"))]
        qtype, offset = QT(d.unpack("I")), d.unpack("Q")
        infos.append((name, qtype, tuple(reversed(dims)), offset))
    alignment = metadata.get("general.alignment")
    align = int(alignment.value) if alignment is not None else _DEFAULT_ALIGNMENT
    data_start = -(-d.pos // align) * align
    tensors = tuple(_RawTensor(name, qtype, shape, data_start + offset, _nbytes(qtype, shape))
                    for name, qtype, shape, offset in infos)
    return _Header(path, order, metadata, tensors)


def _nbytes(qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * type_size if shape else type_size


# --- split files ---------------------------------------------------------------------------------
def _meta_int(header: _Header, key: str, default: int) -> int:
    entry = header.metadata.get(key)
    return int(entry.value) if entry is not None else default


def _split_paths(path: Path, count: int) -> list[Path]:
    """All parts' paths, by llama.cpp's ``NAME-00001-of-00003.gguf`` convention."""
    m = _SPLIT_NAME.match(path.name)
    if m is None:
        raise ModelError(
            f"{path} is part of a model split into {count} files, but its name does not end in "
            f"-NNNNN-of-{count:05d}.gguf, so the other parts cannot be found",
            hint="keep the names llama.cpp's gguf-split gave the parts (MODEL-00001-of-00003.gguf ...)",
        )
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}{m['ext']}") for i in range(1, count + 1)]


def _read_parts(path: Path) -> list[_Header]:
    """The headers of ``path`` and, for a split model, of every other part (first part first)."""
    given = _read_header(path)
    count = _meta_int(given, "split.count", 1)
    if count <= 1:
        return [given]
    paths = _split_paths(path, count)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ModelError(
            f"split model {paths[0].name}: {len(missing)} of its {count} parts are missing: {', '.join(missing)}",
            hint=f"put every part in {path.parent} (llama.cpp loads them from the first one the same way)",
        )
    headers = [given if p.name == path.name else _read_header(p) for p in paths]
    _check_parts(headers, count)
    return headers


def _check_parts(headers: list[_Header], count: int) -> None:
    """Each part names its own number and the same count; together they hold every tensor once."""
    for i, h in enumerate(headers):
        if _meta_int(h, "split.no", -1) != i or _meta_int(h, "split.count", -1) != count:
            raise GGUFFormatError(
                f"{h.path.name} says it is part {_meta_int(h, 'split.no', -1) + 1} of "
                f"{_meta_int(h, 'split.count', 1)}, but its name makes it part {i + 1} of {count}",
                hint="the parts come from different splits; download or split the model again",
            )
    names = Counter(t.name for h in headers for t in h.tensors)
    twice = sorted(n for n, c in names.items() if c > 1)
    expected = _meta_int(headers[0], "split.tensors.count", sum(names.values()))
    if twice or sum(names.values()) != expected:
        raise GGUFFormatError(
            f"split model {headers[0].path.name}: its parts hold {sum(names.values())} tensors, the first part "
            f"says {expected}" + (f"; {', '.join(twice[:3])} appear more than once" if twice else ""),
            hint="the parts come from different splits; download or split the model again",
        )


# --- the source ----------------------------------------------------------------------------------
class GGUFSource:
    """An opened GGUF model (one file or all its split parts): header decoded, tensors read on demand."""

    def __init__(self, headers: list[_Header], *, allow_requantize: bool = False) -> None:
        self.path = headers[0].path
        self.config: dict[str, Any] = {}
        self.allow_requantize = allow_requantize
        self._headers = headers
        self._metadata = headers[0].metadata  # llama.cpp reads the KV pairs from the first part only
        raw = sorted((t for h in headers for t in h.tensors), key=lambda t: gguf_order_key(t.name))
        self._raw = {t.name: t for t in raw}
        self._part = {t.name: i for i, h in enumerate(headers) for t in h.tensors}  # which file holds it
        self.tensors = tuple(TensorInfo(t.name, t.name, t.shape, t.qtype.name, t.nbytes) for t in raw)
        self._by_name = {info.gguf_name: info for info in self.tensors}
        embd = self._raw.get("token_embd.weight")
        self.arch: ArchInfo = arch_info_from_metadata(
            self._metadata, vocab_rows=embd.shape[0] if embd is not None and embd.shape else None,
            tied_embeddings="output.weight" not in self._raw)

    def __repr__(self) -> str:
        parts = f", {len(self._headers)} parts" if len(self._headers) > 1 else ""
        return f"GGUFSource({str(self.path)!r}, {self.arch.gguf_arch_name}, {len(self.tensors)} tensors{parts})"

    @property
    def quantized_types(self) -> Counter[str]:
        """Counts of the tensors stored in a type other than F32/F16/BF16, by type name."""
        return Counter(t.qtype.name for t in self._raw.values() if t.qtype not in FLOAT_TYPES)

    def tensor(self, name: str) -> TensorInfo:
        """A tensor's entry by GGUF name (GGUF input has no other names)."""
        info = self._by_name.get(name)
        if info is None:
            raise ModelError(f"model {self.path} has no tensor {name!r}",
                             hint="tensor names of a GGUF model are its GGUF names (blk.0.attn_q.weight)")
        return info

    def read_for_gguf(self, name: str) -> np.ndarray:
        """A tensor as float32 of ``tensor(name).shape`` (a copy: the file stays read-only)."""
        t = self._raw[self.tensor(name).gguf_name]
        part = self._part[t.name]
        data = np.asarray(self._maps[part][t.offset : t.offset + t.nbytes])  # a plain view, not a memmap
        order = self._headers[part].order
        if t.qtype == QT.F32:
            return data.view(order + "f4").astype(np.float32).reshape(t.shape)
        if t.qtype == QT.F16:
            return data.view(order + "f2").astype(np.float32).reshape(t.shape)
        if t.qtype == QT.BF16:  # the top half of a float32: widen the bits, no rounding
            return (data.view(order + "u2").astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        return self._dequantize(t, data, order)

    def _dequantize(self, t: _RawTensor, data: np.ndarray, order: str) -> np.ndarray:
        if not self.allow_requantize:  # open_gguf refused the file already; a source built another way
            raise requantize_error(self.path, self.quantized_types)
        if order != "<":
            raise ModelError(f"{self.path}: {t.name} is {t.qtype.name} in a big-endian GGUF, which "
                             "aqrecipe cannot dequantize", hint="quantize from the F16/BF16 GGUF or the HF folder")
        rows = data.reshape(*t.shape[:-1], -1) if len(t.shape) > 1 else data
        try:
            return np.asarray(gguf.quants.dequantize(rows, t.qtype), dtype=np.float32).reshape(t.shape)
        except NotImplementedError:
            raise ModelError(f"{self.path}: {t.name} is {t.qtype.name}, which gguf-py cannot dequantize",
                             hint="quantize from the F16/BF16 GGUF or the Hugging Face folder") from None

    @cached_property
    def _maps(self) -> list[np.ndarray]:
        """Each part's bytes, memory-mapped on the first read (compile never maps the data)."""
        return [np.memmap(h.path, dtype=np.uint8, mode="r") for h in self._headers]

    def read(self, hf_name: str) -> np.ndarray:
        """Refused: the torch stages read Hugging Face tensors, which a GGUF file does not hold."""
        raise ModelError(
            f"{self.path} is a GGUF file: the torch stages (calibration, imatrix computation, super-weight "
            f"detection, SmoothQuant, simulated evaluation, safetensors output) need the Hugging Face folder",
            hint="set model: to the model's Hugging Face folder for these stages, or pass an existing "
                 "imatrix with --imatrix",
            code=HF_ONLY_CODE,
        )

    def gguf_names_of(self, hf_name: str) -> tuple[str, ...]:
        """The tensor itself: a GGUF file's names are its GGUF names."""
        return (hf_name,) if hf_name in self._raw else ()

    def gguf_metadata(self) -> dict[str, gguf.GGUFValue]:
        """Every KV pair of the file except those that describe the input file rather than the model."""
        return dict(self._carried)

    @cached_property
    def _carried(self) -> dict[str, gguf.GGUFValue]:
        return {key: _decoded(value) for key, value in self._metadata.items() if carried_key(key, value)}

    def fingerprint(self) -> str:
        """sha256 over the carried metadata and the tensor table (names, types, shapes; not offsets).

        String arrays are hashed as stored, so the vocabulary is never decoded for it.
        """
        digest = hashlib.sha256(b"gguf-source 1\n")
        for key, value in sorted(self._metadata.items()):
            if not carried_key(key, value):
                continue
            sub = value.sub_type.name if value.sub_type is not None else ""
            digest.update(f"{key}|{value.type.name}|{sub}|".encode())
            if isinstance(value.value, PackedStrings):
                digest.update(value.value.data)
            else:
                digest.update(json.dumps(value.value, default=_bytes_hex, separators=(",", ":")).encode())
            digest.update(b"\n")
        for t in self._raw.values():
            digest.update(f"{t.name}|{t.qtype.name}|{list(t.shape)}\n".encode())
        return digest.hexdigest()

    @property
    def hf_folder(self) -> None:
        """None: a GGUF file has no Hugging Face folder for the torch stages."""
        return None

    @property
    def weight_files(self) -> tuple[Path, ...]:
        """The file, or every part of a split model (first part first)."""
        return tuple(h.path for h in self._headers)

    @property
    def tokenizer_dir(self) -> None:
        """None: the tokenizer is in the GGUF metadata (tokenizer.ggml.*), not in HF files."""
        return None


def _bytes_hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot hash {type(value).__name__}")


def carried_key(key: str, value: gguf.GGUFValue) -> bool:
    """Whether a KV pair of an input GGUF belongs in the outputs written from it."""
    if key in DROPPED_KEYS or key.startswith(DROPPED_PREFIXES):
        return False
    # gguf-py's writer refuses an empty array; llama.cpp reads an absent key as no entries
    return not (value.type == VT.ARRAY and not value.value)


def requantize_error(path: Path, counts: Mapping[str, int]) -> ModelError:
    """AQ312: the file is already quantized (with its type counts) and what to do instead."""
    listed = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return ModelError(
        f"{path} is already quantized ({listed} tensors); quantizing it again compounds the rounding "
        "error of both quantizations",
        hint="quantize from the F16/BF16 GGUF or the Hugging Face folder, or pass --allow-requantize "
             "(as llama-quantize) to accept the extra error",
        code=REQUANTIZE_CODE,
    )


def open_gguf(path: Path, *, allow_requantize: bool = False) -> GGUFSource:
    """Open a GGUF model file (any part of a split model opens all parts); headers only.

    Raises GGUFFormatError for a damaged file, ModelError for a missing part, for metadata that
    contradicts the tensors, or (AQ312) for a quantized file unless ``allow_requantize``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist", hint="check the path")
    source = GGUFSource(_read_parts(path), allow_requantize=allow_requantize)
    check_shapes(source.path, source.arch, source.tensors, gguf_keys(source.arch.gguf_arch_name))
    counts = source.quantized_types
    if counts:
        error = requantize_error(source.path, counts)
        if not allow_requantize:
            raise error
        if source.path.resolve() not in _warned_requantize:
            _warned_requantize.add(source.path.resolve())
            log.warning("--allow-requantize: %s; it is dequantized and quantized again", error.message)
    return source


def gguf_file_metadata(path: str | Path) -> dict[str, gguf.GGUFValue]:
    """Every KV pair of one GGUF file, file type included (the bounded scan checks the header first).

    Fast on large vocabularies, unlike ``gguf.GGUFReader``; for reading back what was written.
    """
    return {key: _decoded(value) for key, value in _read_header(Path(path)).metadata.items()}
