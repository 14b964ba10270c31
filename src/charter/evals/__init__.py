"""Evaluations: the paper's HHH comparisons (`charter eval hhh`), with accuracy and calibration."""

from charter.evals.hhh import EvalError, EvalSummary, HHHItem, eval_hhh, load_hhh
from charter.evals.stats import (
    Accuracy,
    CalibrationBin,
    bootstrap_accuracy,
    calibration,
    expected_calibration_error,
)

__all__ = [
    "Accuracy",
    "CalibrationBin",
    "EvalError",
    "EvalSummary",
    "HHHItem",
    "bootstrap_accuracy",
    "calibration",
    "eval_hhh",
    "expected_calibration_error",
    "load_hhh",
    "pairwise_calibration",
]
