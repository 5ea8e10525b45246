"""Dynamic layer-wise quantization: sensitivity measurement, budget planner, presets' report.

Importing this package does not import torch (only :mod:`.kld` does, lazily).
"""

from aqrecipe.planner.config import DEFAULT_CANDIDATES, SCHEMA_FRAGMENT, MeasurementSpec, PlannerSpec
from aqrecipe.planner.dynamic import plan_dynamic
from aqrecipe.planner.fit import fit_calibration, spearman
from aqrecipe.planner.measure import measure
from aqrecipe.planner.measurement import Calibration, Measurement, TensorMeasurement, TypeOption, imatrix_hash
from aqrecipe.planner.planner import Budget, PlanResult, as_plan_spec, as_rules, plan_types, solve_plan
from aqrecipe.planner.report import PlannerReport, build_report
from aqrecipe.planner.solver import Group, Option, Solution, solve_dp, solve_lagrangian

__all__ = [
    "DEFAULT_CANDIDATES", "SCHEMA_FRAGMENT", "Budget", "Calibration", "Group", "Measurement",
    "MeasurementSpec", "Option", "PlanResult", "PlannerReport", "PlannerSpec", "Solution",
    "TensorMeasurement", "TypeOption", "as_plan_spec", "as_rules", "build_report", "fit_calibration",
    "imatrix_hash", "measure", "plan_dynamic", "plan_types", "solve_dp", "solve_lagrangian",
    "solve_plan", "spearman",
]
