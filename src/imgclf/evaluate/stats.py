"""Uncertainty and significance: bootstrap confidence intervals, McNemar's exact test, mean and spread, and
how intervals and p-values read in every report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imgclf.evaluate.metrics import confusion, macro, per_class


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(indices) over `resamples` seeded resamples of n samples."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_and_f1_ci(targets: np.ndarray, predicted: np.ndarray, num_classes: int, resamples: int = 1000,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of accuracy and macro-F1 (metrics.macro); both use the same resamples."""
    correct = predicted == targets

    def macro_f1(i: np.ndarray) -> float:  # over the classes in this resample, as for the point estimate
        cm = confusion(targets[i], predicted[i], num_classes)
        return macro(per_class(cm)["f1"], cm)

    return {"accuracy": bootstrap_ci(lambda i: correct[i].mean(), len(targets), resamples, seed),
            "macro_f1": bootstrap_ci(macro_f1, len(targets), resamples, seed)}


def scores(targets: np.ndarray, predicted: np.ndarray, num_classes: int, resamples: int = 1000,
           seed: int = 0) -> dict:
    """Accuracy and macro-F1 of predicted labels, with their 95% bootstrap intervals under 'ci'."""
    cm = confusion(targets, predicted, num_classes)
    return {"accuracy": float((predicted == targets).mean()), "macro_f1": macro(per_class(cm)["f1"], cm),
            "ci": accuracy_and_f1_ci(targets, predicted, num_classes, resamples, seed)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired right/wrong outcomes of two models over the same samples.

    Only discordant pairs count: b = A right and B wrong, c = A wrong and B right. Under the null
    (equal error rates) b ~ Binomial(b + c, 1/2); the two-sided p-value is exact (binomial)."""
    from scipy.stats import binomtest

    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def format_interval(value: float, ci: list[float] | tuple[float, float]) -> str:
    """An estimate and its interval as every report shows them: 0.9712 [0.9680, 0.9745]."""
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def format_p(p: float) -> str:
    """A p-value in 3 significant digits; one too small for a float reads as < 1e-300, not 0."""
    return f"{p:.3g}" if p > 0 else "< 1e-300"


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}
