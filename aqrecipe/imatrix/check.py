"""Does an imatrix belong to a model? Names and column counts must match."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aqrecipe.errors import ImatrixError
from aqrecipe.imatrix.data import ImatrixData

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)

# output.weight is only in an imatrix when it was asked for (llama-imatrix --process-output)
OPTIONAL = ("output.weight",)


@dataclass(frozen=True)
class ImatrixMatch:
    matched: tuple[str, ...]
    missing: tuple[str, ...]  # model weights without an entry
    extra: tuple[str, ...]  # entries the model has no weight for
    size_mismatches: tuple[tuple[str, int, int], ...]  # (name, imatrix n_cols, model n_cols)

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["partial"] = self.partial
        return d


def expected_columns(model_source: WeightSource) -> dict[str, int]:
    """Weights llama.cpp collects imatrix data for: 2-D block weights (+ output.weight)."""
    out: dict[str, int] = {}
    for t in model_source.tensors:
        name = t.gguf_name
        if len(t.shape) < 2 or not name.endswith(".weight"):
            continue
        if name.startswith("blk.") or name == "output.weight":
            out[name] = int(t.shape[-1])  # HF orientation [out, in]: columns = in-features
    return out


def match_imatrix(imatrix: ImatrixData, model_source: WeightSource) -> ImatrixMatch:
    expected = expected_columns(model_source)
    matched, extra, sizes = [], [], []
    for name in imatrix.names:
        if name not in expected:
            extra.append(name)
            continue
        n_cols = imatrix.entries[name].n_cols
        if n_cols != expected[name]:
            sizes.append((name, n_cols, expected[name]))
        else:
            matched.append(name)
    missing = [n for n in expected if n not in imatrix.entries and n not in OPTIONAL]
    return ImatrixMatch(tuple(matched), tuple(missing), tuple(extra), tuple(sizes))


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_against_model(imatrix: ImatrixData, model_source: WeightSource, *, allow_partial: bool = False) -> ImatrixMatch:
    """Refuse an imatrix whose names or sizes do not match ``model_source``.

    Entries for weights the model lacks, or with another column count, are
    always refused. Model weights without an entry (a partial imatrix) are
    refused unless ``allow_partial``; then they are reported in the log.
    """
    m = match_imatrix(imatrix, model_source)
    problems = []
    if m.size_mismatches:
        problems.append("size mismatches: " + _listing(
            [f"{n} ({a} columns in the imatrix, {b} in the model)" for n, a, b in m.size_mismatches]))
    if m.extra:
        entries = "entry" if len(m.extra) == 1 else "entries"
        problems.append(f"{len(m.extra)} {entries} the model has no weight for: {_listing(list(m.extra))}")
    if problems:
        raise ImatrixError(
            "the imatrix does not belong to this model: " + "; ".join(problems),
            hint="compute an imatrix for this model (aqrecipe imatrix compute MODEL)",
        )
    if m.missing:
        msg = f"the imatrix covers {len(m.matched)} of {len(m.matched) + len(m.missing)} weights; " \
              f"missing: {_listing(list(m.missing))}"
        if not allow_partial:
            raise ImatrixError(msg, hint="recompute the imatrix, or allow a partial imatrix "
                                         "(allow_partial / --allow-partial-imatrix)")
        log.warning("%s (partial imatrix allowed)", msg)
    return m
