"""Experiment stage: plan the grid (pure), run it with caching, compute statistics."""

from lorasum.experiment.grid import AdapterJob, EvalJob, Plan, plan
from lorasum.experiment.runner import RESULTS_SCHEMA_VERSION, run_experiment

__all__ = ["AdapterJob", "EvalJob", "Plan", "plan", "run_experiment", "RESULTS_SCHEMA_VERSION"]
