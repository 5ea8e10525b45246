"""Does an imatrix belong to a model? Names and column counts must match."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aqrecipe.errors import ImatrixError
from aqrecipe.imatrix.data import ImatrixData, ImatrixEntry

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)

# output.weight is only in an imatrix when it was asked for (llama-imatrix --process-output)
OPTIONAL = ("output.weight",)


#: MLA's attn_k_b multiplies each head's q_nope inside llama.cpp's attention; in transformers that
#: product is no linear's input, so the calibration pass cannot observe it (llama-imatrix does)
UNOBSERVABLE_ROLES = ("attn_k_b",)


def is_optional(name: str) -> bool:
    """Entries an imatrix may hold or lack: the output head, expert routers (llama-imatrix
    collects them, they are never quantized) and the roles calibration cannot observe."""
    from aqrecipe.models.tensor_names import role_of

    return name in OPTIONAL or "ffn_gate_inp" in name or role_of(name) in UNOBSERVABLE_ROLES


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


def expected_matrices(model_source: WeightSource) -> dict[str, tuple[int, int]]:
    """Weights llama.cpp collects imatrix data for (2-D block weights, 3-D merged experts, output.weight)
    with their (matrices, columns): one matrix for a 2-D weight, one per expert for merged experts."""
    out: dict[str, tuple[int, int]] = {}
    for t in model_source.tensors:
        name = t.gguf_name
        if len(t.shape) < 2 or not name.endswith(".weight"):
            continue
        if name.startswith("blk.") or name == "output.weight":
            n_mat = int(t.shape[0]) if len(t.shape) == 3 else 1
            out[name] = (n_mat, int(t.shape[-1]))  # HF orientation [out, in]: columns = in-features
    return out


def fit_expert_entries(imatrix: ImatrixData, model_source: WeightSource) -> int:
    """Give every merged-expert entry one row per expert; returns how many entries were reshaped.

    llama.cpp's legacy ``.dat`` stores an expert tensor's statistics as one vector of
    ``n_cols x n_expert`` values (expert-major) with one call count, so the model's shape says where
    each expert's row starts; GGUF imatrix files already hold one row and one count per expert.
    The shared count cannot say that an expert saw no token; its row does: llama-imatrix writes a
    constant row for it (1.0, or zeros), which carries no information. Such a row gets count 0, as
    the GGUF form says it, and is weighted like the tensor's seen experts.
    """
    reshaped = 0
    for name, (n_mat, n_cols) in expected_matrices(model_source).items():
        e = imatrix.entries.get(name)
        if e is None or n_mat == 1 or e.n_mat != 1 or e.n_cols != n_mat * n_cols:
            continue
        rows = e.in_sum2.reshape(n_mat, n_cols)
        in_sum = None if e.in_sum is None else e.in_sum.reshape(n_mat, n_cols)
        unseen = (rows == rows[:, :1]).all(axis=1)
        counts = np.where(unseen, 0.0, np.repeat(e.counts, n_mat))
        imatrix.entries[name] = ImatrixEntry(rows, counts, in_sum)
        reshaped += 1
    return reshaped


def repeat_per_matrix(imatrix: ImatrixData, model_source: WeightSource) -> None:
    """Give a one-row entry of a 3-D weight that is not merged experts (MLA's attn_v_b: one matrix per
    head, all reading the same input) one row per matrix, the layout llama-imatrix writes for it."""
    for name, (n_mat, n_cols) in expected_matrices(model_source).items():
        e = imatrix.entries.get(name)
        if e is None or n_mat == 1 or e.n_mat != 1 or e.n_cols != n_cols or "_exps" in name:
            continue
        in_sum = None if e.in_sum is None else np.repeat(e.in_sum, n_mat, axis=0)
        imatrix.entries[name] = ImatrixEntry(np.repeat(e.in_sum2, n_mat, axis=0), np.repeat(e.counts, n_mat), in_sum)


def match_imatrix(imatrix: ImatrixData, model_source: WeightSource) -> ImatrixMatch:
    """Which entries fit the model's weights (columns, and one row per expert for merged experts)."""
    expected = expected_matrices(model_source)
    matched, extra, sizes = [], [], []
    for name in imatrix.names:
        if name not in expected:
            extra.append(name)
            continue
        e, (n_mat, n_cols) = imatrix.entries[name], expected[name]
        if e.n_cols != n_cols:
            sizes.append((name, e.n_cols, n_cols))
        elif e.n_mat not in (1, n_mat):  # one row for all experts: an old file, used for each of them
            sizes.append((name, e.n_mat * e.n_cols, n_mat * n_cols))
        else:
            matched.append(name)
    missing = [n for n in expected if n not in imatrix.entries and not is_optional(n)]
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
    fit_expert_entries(imatrix, model_source)
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
