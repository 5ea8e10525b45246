"""A plan checked against its model as strictly as a recipe is: plans are inputs too.

``aqrecipe compile -o plan.json`` writes a plan a user may edit before ``apply``. Whatever it
says, it must describe this model's tensors, each exactly once, with the model's names and
shapes, a type that fits the rows, and the byte size that type gives; otherwise the GGUF would
be one llama.cpp cannot load. One error lists every problem found (the first few of each kind).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from aqrecipe.errors import AqrecipeError, PlanError
from aqrecipe.plan.compiler import is_quantizable
from aqrecipe.quant.blocktypes import FLOAT_TYPES, fits, layout
from aqrecipe.quant.sizes import tensor_bytes

from aqrecipe.plan.model import Plan, plan_source

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

_SHOWN = 3  # problems of one kind named before "and N more"


def _listed(what: str, names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{what}: {', '.join(names[:_SHOWN])}{more}"


def plan_problems(plan: Plan, source: WeightSource) -> list[str]:
    """Every way ``plan`` disagrees with ``source`` (empty when it describes the model exactly)."""
    model = {t.gguf_name: t for t in source.tensors}
    counts = Counter(e.gguf_name for e in plan.entries)
    problems = []
    if duplicated := sorted(n for n, c in counts.items() if c > 1):
        problems.append(_listed("tensors listed more than once", duplicated))
    if missing := [n for n in model if n not in counts]:
        problems.append(_listed("model tensors the plan leaves out", missing))
    if unknown := sorted(n for n in counts if n not in model):
        problems.append(_listed("tensors the model does not have", unknown))
    wrong: dict[str, list[str]] = {}
    for e in plan.entries:
        t = model.get(e.gguf_name)
        if t is None:
            continue
        if tuple(e.shape) != tuple(t.shape):
            wrong.setdefault("shapes that differ from the model's", []).append(
                f"{e.gguf_name} {list(e.shape)} (model {list(t.shape)})")
            continue
        try:
            layout(e.type)
        except AqrecipeError:
            wrong.setdefault("unknown types", []).append(f"{e.gguf_name} {e.type!r}")
            continue
        if not is_quantizable(e.gguf_name, e.shape) and e.type not in FLOAT_TYPES:
            wrong.setdefault("quantized tensors llama.cpp keeps in float (1-D, norms, routers)", []).append(
                f"{e.gguf_name} {e.type}")
        elif not fits(e.type, int(e.shape[-1])):
            wrong.setdefault("types whose blocks do not fit the rows", []).append(
                f"{e.gguf_name} {e.type} (rows of {e.shape[-1]}, blocks of {layout(e.type).block_weights})")
        elif e.n_bytes != tensor_bytes(e.type, e.shape):
            wrong.setdefault("byte sizes that do not match the type", []).append(
                f"{e.gguf_name} {e.n_bytes} (a {e.type}{list(e.shape)} takes {tensor_bytes(e.type, e.shape)})")
    problems += [_listed(what, names) for what, names in wrong.items()]
    return problems


def check_plan(plan: Plan, source: WeightSource) -> None:
    """PlanError naming every problem when ``plan`` does not describe ``source`` exactly."""
    problems = plan_problems(plan, source)
    if problems:
        n = len(problems)
        raise PlanError(
            f"the plan does not fit the model at {plan.model_path} ({n} problem{'s' if n > 1 else ''}): "
            + "; ".join(problems),
            hint="recompile the recipe (aqrecipe compile RECIPE -o plan.json); to change types, edit the "
            "recipe's rules rather than the plan",
        )


def checked_source(plan: Plan) -> WeightSource:
    """The plan's model, refused when it changed since the plan was compiled or the plan does not fit it."""
    source = plan_source(plan)
    if source.fingerprint() != plan.model_fingerprint:
        raise PlanError(
            f"the model at {plan.model_path} changed since the plan was compiled",
            hint="recompile the recipe (aqrecipe compile) and apply the new plan",
        )
    check_plan(plan, source)
    return source
