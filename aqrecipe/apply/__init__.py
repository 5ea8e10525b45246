"""Orchestration of ``apply``: options, pre-flight checks, the work-folder guard, the stages
(imatrix, super weights, planner, SmoothQuant), packing and writing, then evaluation.

Only the CLI sits above this folder.
"""
