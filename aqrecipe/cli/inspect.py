"""``aqrecipe inspect PATH``: describe a GGUF file, a compiled plan or an imatrix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from aqrecipe.errors import AqrecipeError


def inspect_gguf(path: Path) -> tuple[dict[str, Any], str]:
    """Architecture, file type, per-type tensor counts and bytes, aqrecipe metadata."""
    from aqrecipe.formats.gguf_read import open_gguf

    reader = open_gguf(path)  # header bounds-checked first: a damaged file is a GGUFFormatError
    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - exotic fields are shown by type only
            value = f"<{field.types}>"
        fields[name] = value
    if fields.get("general.type") == "imatrix":
        from aqrecipe.imatrix import load_imatrix, summarize_imatrix

        return summarize_imatrix(load_imatrix(path))
    counts: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    tensors = []
    for t in reader.tensors:
        tname = t.tensor_type.name
        counts[tname] += 1
        nbytes[tname] += int(t.n_bytes)
        tensors.append({"name": t.name, "type": tname, "shape": [int(x) for x in t.shape], "bytes": int(t.n_bytes)})
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    total = sum(nbytes.values())
    data = {
        "path": str(path),
        "metadata": {k: v for k, v in fields.items() if k != "aqrecipe.recipe"},
        "recipe": fields.get("aqrecipe.recipe"),
        "n_tensors": len(tensors),
        "n_params": n_params,
        "tensor_bytes": total,
        "bits_per_weight": 8.0 * total / n_params if n_params else 0.0,
        "types": {k: {"tensors": counts[k], "bytes": nbytes[k]} for k in sorted(counts)},
        "tensors": tensors,
    }
    lines = [f"{path}: {fields.get('general.architecture')} '{fields.get('general.name')}', "
             f"file_type {fields.get('general.file_type')}, {len(tensors)} tensors, {n_params:,} params, "
             f"{data['bits_per_weight']:.3f} bpw"]
    for k in sorted(counts, key=lambda k: -nbytes[k]):
        lines.append(f"  {k:<8} {counts[k]:4d} tensors  {nbytes[k]:>12,} bytes")
    for key in ("aqrecipe.version", "aqrecipe.plan_sha256"):
        if key in fields:
            lines.append(f"  {key} = {fields[key]}")
    return data, "\n".join(lines)


def inspect_path(path: Path) -> tuple[dict[str, Any], str]:
    """Dispatch on the file's kind (by magic for GGUF, by suffix otherwise)."""
    import os

    from aqrecipe.formats.bounded import special_kind

    if not path.exists():
        raise AqrecipeError(f"{path} does not exist", hint="check the path", code="AQ301")
    kind = special_kind(os.stat(path).st_mode)  # a FIFO would block the read below; a device never end
    if kind is not None:
        raise AqrecipeError(f"{path} is {kind}, not a file inspect can read",
                            hint="inspect takes a .gguf model or imatrix, a plan .json or a legacy imatrix .dat",
                            code="AQ302")
    with open(path, "rb") as f:
        head = f.read(4096)  # the magic, or a JSON file's format tag
    if head[:4] == b"GGUF" or path.suffix.lower() == ".gguf":  # a damaged .gguf is reported as such
        return inspect_gguf(path)
    if path.suffix == ".json":
        if b'"aqrecipe.importance/' in head:
            from aqrecipe.importance import load_importance, summarize_importance

            return summarize_importance(load_importance(path))
        from aqrecipe.plan import load_plan, render_plan

        plan = load_plan(path)
        return plan.to_dict(), render_plan(plan)
    if path.suffix == ".dat":
        from aqrecipe.imatrix import load_imatrix, summarize_imatrix

        return summarize_imatrix(load_imatrix(path))
    raise AqrecipeError(
        f"cannot tell what {path} is",
        hint="inspect takes a .gguf model or imatrix, a plan .json or a legacy imatrix .dat",
        code="AQ302",
    )


def inspect_supported() -> tuple[dict[str, Any], str]:
    """The architectures llama.cpp's converter reads, and the families tested end to end."""
    from aqrecipe.models.converter.bridge import supported_architectures
    from aqrecipe.models.converter.bundle import CONVERTER_VERSION
    from aqrecipe.models.support import TESTED_FAMILIES, supported_markdown

    names = supported_architectures()
    data = {"converter": f"llama-cpp-python {CONVERTER_VERSION}", "architectures": list(names),
            "tested_families": [f.name for f in TESTED_FAMILIES]}
    text = (supported_markdown() + f"\nllama.cpp's converter (llama-cpp-python {CONVERTER_VERSION}) reads "
            f"{len(names)} text architectures:\n" + "\n".join(f"  {name}" for name in names))
    return data, text
