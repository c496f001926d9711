"""Per-machine tuning: which precision, attention kernel, thread count and torch.compile setting run a model's step
fastest here, measured on the real model shape and cached (:func:`optimize_for`)."""

from deitlab.optimize.memory import retain_freed_memory
from deitlab.optimize.tune import Plan, apply_plan, optimize_for, plan_for, precision_for_pass

__all__ = ["Plan", "apply_plan", "optimize_for", "plan_for", "precision_for_pass", "retain_freed_memory"]
