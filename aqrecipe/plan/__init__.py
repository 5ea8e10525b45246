"""Recipe -> plan: rules, llama.cpp mixtures, fallbacks and sizes (headers only)."""

from aqrecipe.plan.compiler import PlanSpec, compile_plan, is_quantizable
from aqrecipe.plan.mixtures import MIXTURES, Mixture, get_mixture
from aqrecipe.plan.check import check_plan, checked_source
from aqrecipe.plan.model import Plan, PlanEntry, load_plan
from aqrecipe.plan.render import human_bytes, render_plan
from aqrecipe.plan.rules import Rule, RuleSet, parse_set_option, rule_kind

__all__ = [
    "MIXTURES",
    "Mixture",
    "Plan",
    "PlanEntry",
    "PlanSpec",
    "Rule",
    "RuleSet",
    "check_plan",
    "checked_source",
    "compile_plan",
    "get_mixture",
    "human_bytes",
    "is_quantizable",
    "load_plan",
    "parse_set_option",
    "render_plan",
    "rule_kind",
]
