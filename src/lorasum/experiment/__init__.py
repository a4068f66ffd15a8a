"""Experiment stage: plan the grid (pure), run it with caching, compute statistics."""

from lorasum.experiment.grid import AdapterJob, EvalJob, Plan, plan
from lorasum.experiment.results import RESULTS_SCHEMA_VERSION
from lorasum.experiment.runner import plan_of, run_experiment

__all__ = ["AdapterJob", "EvalJob", "Plan", "plan", "plan_of", "run_experiment", "RESULTS_SCHEMA_VERSION"]
