"""``quantization.rounding`` (and a rule's ``rounding``): round-to-nearest or GPTQ error compensation.

The codec side is :mod:`aqrecipe.quant.rounding`; this module only holds the setting (no numpy),
so recipes and plans carry it without importing the codecs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from aqrecipe.errors import PlanError

__all__ = ["RTN", "Rounding"]


@dataclass(frozen=True)
class Rounding:
    """A rounding method: ``rtn`` (each block on its own, llama.cpp's way) or ``gptq`` with its options.

    ``damp``: added to diag(H) as a fraction of its mean; ``block_size``: lazy-batch width in columns
    (speed only); ``act_order``: encode whole block groups in order of decreasing diag(H) mass.
    The options mean nothing for ``rtn``.
    """

    type: Literal["rtn", "gptq"] = "rtn"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False

    @property
    def is_gptq(self) -> bool:
        """True when this rounding needs the layer input's Hessian."""
        return self.type == "gptq"

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``rtn`` is just ``{"type": "rtn"}``."""
        return asdict(self) if self.is_gptq else {"type": "rtn"}

    @classmethod
    def from_dict(cls, data: Any) -> Rounding:
        """The rounding a recipe (schema-checked) or a plan file wrote; ``None`` is rtn."""
        if data is None:
            return RTN
        if not isinstance(data, dict) or data.get("type", "rtn") not in ("rtn", "gptq"):
            raise PlanError(f"rounding {data!r} is not {{type: rtn}} or {{type: gptq, ...}}",
                            hint="recompile the recipe")
        if data.get("type", "rtn") == "rtn":
            return RTN
        try:
            out = cls("gptq", float(data.get("damp", 0.01)), int(data.get("block_size", 128)),
                      bool(data.get("act_order", False)))
        except (TypeError, ValueError) as exc:
            raise PlanError(f"rounding {data!r}: {exc}", hint="recompile the recipe") from None
        if not (out.damp >= 0 and out.damp != float("inf")) or out.block_size < 1:
            raise PlanError(f"rounding {data!r}: damp must be >= 0 and block_size >= 1", hint="recompile the recipe")
        return out

    def describe(self) -> str:
        """Short text for reports: ``rtn`` or ``gptq(damp=0.01, block=128, act_order)``."""
        if not self.is_gptq:
            return "rtn"
        order = ", act_order" if self.act_order else ""
        return f"gptq(damp={self.damp:g}, block={self.block_size}{order})"


RTN = Rounding()
