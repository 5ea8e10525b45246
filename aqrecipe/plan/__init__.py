"""Recipe -> plan: rules, llama.cpp mixtures, fallbacks and sizes (headers only)."""

from .compiler import PlanSpec, compile_plan, is_quantizable
from .mixtures import MIXTURES, Mixture, get_mixture
from .model import Plan, PlanEntry, load_plan
from .render import human_bytes, render_plan
from .rules import Rule, RuleSet, parse_set_option, rule_kind

__all__ = [
    "MIXTURES",
    "Mixture",
    "Plan",
    "PlanEntry",
    "PlanSpec",
    "Rule",
    "RuleSet",
    "compile_plan",
    "get_mixture",
    "human_bytes",
    "is_quantizable",
    "load_plan",
    "parse_set_option",
    "render_plan",
    "rule_kind",
]
