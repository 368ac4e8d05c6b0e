import numpy as np
import pytest
from sklearn.metrics import f1_score

from imgclf.evaluate.stats import accuracy_and_f1_ci, bootstrap_ci, mcnemar, mean_std


def _pairs(both: int, a_only: int, b_only: int, neither: int):
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    return a, b


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (0, 5, 2 * 0.5**5),  # 0.0625
    (1, 9, 22 / 1024),  # P(X <= 1) for Binomial(10, 1/2) = 11/1024, doubled
    (4, 4, 1.0),
    (0, 0, 1.0),
])
def test_mcnemar_by_hand(a_only, b_only, p):
    a, b = _pairs(7, a_only, b_only, 3)
    result = mcnemar(a, b)
    assert result == {"a_only": a_only, "b_only": b_only, "p_value": pytest.approx(p)}
    swapped = mcnemar(b, a)
    assert swapped["a_only"] == b_only
    assert swapped["b_only"] == a_only
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_bootstrap_all_correct():
    correct = np.ones(50)
    assert bootstrap_ci(lambda i: correct[i].mean(), 50) == (1.0, 1.0)


def test_bootstrap_seeded():
    correct = np.random.default_rng(1).random(200) < 0.7
    ci = bootstrap_ci(lambda i: correct[i].mean(), 200, seed=3)
    assert ci == bootstrap_ci(lambda i: correct[i].mean(), 200, seed=3)
    assert ci != bootstrap_ci(lambda i: correct[i].mean(), 200, seed=4)


def test_bootstrap_close_to_normal_approximation():
    correct = np.random.default_rng(0).permutation(np.arange(1000) < 900)  # exactly 900 right
    low, high = bootstrap_ci(lambda i: correct[i].mean(), 1000)
    half = 1.96 * np.sqrt(0.9 * 0.1 / 1000)  # ~0.0186
    assert low == pytest.approx(0.9 - half, abs=0.006)
    assert high == pytest.approx(0.9 + half, abs=0.006)
    assert low < correct.mean() < high
    narrow = bootstrap_ci(lambda i: correct[i].mean(), 1000, level=0.5)
    assert low < narrow[0] <= narrow[1] < high


def test_bootstrap_two_samples():
    correct = np.array([1.0, 0.0])  # each resample is all right or all wrong with chance 1/4
    assert bootstrap_ci(lambda i: correct[i].mean(), 2, resamples=2000) == (0.0, 1.0)


def test_accuracy_and_f1_ci_contain_point_estimates():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    predicted = np.where(rng.random(300) < 0.8, targets, rng.integers(0, 3, 300))
    result = accuracy_and_f1_ci(targets, predicted, 3, resamples=500)
    accuracy = (predicted == targets).mean()
    f1 = f1_score(targets, predicted, average="macro")
    assert result["accuracy"][0] < accuracy < result["accuracy"][1]
    assert result["macro_f1"][0] < f1 < result["macro_f1"][1]
    assert result["accuracy"][1] - result["accuracy"][0] < 0.2


def test_f1_interval_of_a_perfect_model_with_a_rare_class_is_a_point():
    """Resamples that miss the rare class must not count it as F1 0 (that would bias the interval down)."""
    targets = np.array([0] * 49 + [1] * 49 + [2] * 2)
    assert accuracy_and_f1_ci(targets, targets.copy(), 3, resamples=300)["macro_f1"] == (1.0, 1.0)


def test_mean_std():
    assert mean_std([1, 2, 3]) == {"mean": 2.0, "std": 1.0}
    assert mean_std([4.5]) == {"mean": 4.5, "std": 0.0}
