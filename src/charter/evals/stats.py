"""Numbers an evaluation reports: accuracy with a bootstrap interval, and calibration (ECE, bins).

Plain Python (no numpy): a few hundred comparisons are resampled a thousand times in milliseconds,
and a seeded `random.Random` makes the interval the same on every run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Accuracy:
    """Accuracy over `n` comparisons with a percentile-bootstrap interval at `level`."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95


def bootstrap_accuracy(
    correct: Sequence[bool], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Accuracy:
    """Accuracy of `correct` and its percentile bootstrap interval (items resampled with replacement)."""
    n = len(correct)
    if n == 0:
        raise ValueError("no comparisons to score")
    hits = [1 if c else 0 for c in correct]
    value = sum(hits) / n
    rng = random.Random(seed)
    means = sorted(sum(hits[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[min(resamples - 1, max(0, int(tail * resamples)))]
    high = means[min(resamples - 1, max(0, int((1 - tail) * resamples) - 1))]
    return Accuracy(value, low, high, n, level)


@dataclass
class CalibrationBin:
    """One bin of a reliability diagram."""

    low: float
    high: float
    count: int
    mean_predicted: float
    frequency: float


def calibration(
    probabilities: Sequence[float], outcomes: Sequence[bool], bins: int = 10
) -> list[CalibrationBin]:
    """Equal-width bins of the predicted probability of the correct answer, with the observed frequency."""
    if len(probabilities) != len(outcomes):
        raise ValueError("probabilities and outcomes differ in length")
    members: dict[int, list[int]] = {}
    for i, p in enumerate(probabilities):
        members.setdefault(min(int(p * bins), bins - 1), []).append(i)
    out = []
    for index in sorted(members):
        group = members[index]
        out.append(
            CalibrationBin(
                low=index / bins,
                high=(index + 1) / bins,
                count=len(group),
                mean_predicted=sum(probabilities[i] for i in group) / len(group),
                frequency=sum(1 for i in group if outcomes[i]) / len(group),
            )
        )
    return out


def pairwise_calibration(prob_correct: Sequence[float], bins: int = 10) -> list[CalibrationBin]:
    """Calibration of a two-way choice: each comparison gives both of its answers as points.

    Binning P(correct) alone is empty of information (above 0.5 it is right by definition); the
    answer the model gave p is correct in a fraction of cases, and a calibrated model has that
    fraction equal to p. So each comparison adds (p, correct) and (1 - p, incorrect).
    """
    points = [*prob_correct, *(1.0 - p for p in prob_correct)]
    outcomes = [True] * len(prob_correct) + [False] * len(prob_correct)
    return calibration(points, outcomes, bins)


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """Σ (bin share) x |mean predicted - frequency|: 0 for a perfectly calibrated model."""
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return sum(b.count / total * abs(b.mean_predicted - b.frequency) for b in bins)
