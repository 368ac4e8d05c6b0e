import json

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from imgclf.evaluate.metrics import (
    calibration,
    classification_report,
    confusion,
    log_loss,
    most_confused,
    per_class,
    top_k_accuracy,
)


def _case(seed: int, num_classes: int, n: int):
    """Softmax probabilities (no exact ties) and targets drawn from a random subset of the classes;
    some classes are pushed down so they are rarely or never the argmax."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, num_classes))
    logits[:, rng.random(num_classes) < 0.3] -= 4.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    subset = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    return probs, rng.choice(subset, size=n)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(2, 8), n=st.integers(1, 60))
def test_report_matches_sklearn(seed, num_classes, n):
    probs, targets = _case(seed, num_classes, n)
    labels = list(range(num_classes))
    predicted = probs.argmax(axis=1)
    report = classification_report(probs, targets, [f"c{c}" for c in labels])

    cm = confusion(targets, predicted, num_classes)
    assert np.array_equal(cm, skm.confusion_matrix(targets, predicted, labels=labels))
    assert report["confusion"] == cm.tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        targets, predicted, labels=labels, zero_division=0)
    stats = per_class(cm)
    for name, expected in zip(("precision", "recall", "f1", "support"), (precision, recall, f1, support), strict=True):
        np.testing.assert_allclose(stats[name], expected, atol=1e-12)
        np.testing.assert_allclose([row[name] for row in report["per_class"]], expected, atol=1e-12)
    for average in ("macro", "weighted"):  # over the classes in targets or predictions: sklearn's default labels
        expected = skm.precision_recall_fscore_support(targets, predicted, average=average, zero_division=0)[:3]
        got = [report[average][m] for m in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got, expected, atol=1e-12)

    assert report["accuracy"] == pytest.approx(skm.accuracy_score(targets, predicted))
    assert report["samples"] == n
    for k in range(1, num_classes):
        assert top_k_accuracy(probs, targets, k) == pytest.approx(
            skm.top_k_accuracy_score(targets, probs if num_classes > 2 else probs[:, 1], k=k, labels=labels))
    k = min(5, num_classes)
    assert report["top_k"] == {"k": k, "accuracy": top_k_accuracy(probs, targets, k)}
    renormalised = probs.astype(np.float64) / probs.sum(axis=1, keepdims=True)
    assert log_loss(renormalised, targets) == pytest.approx(skm.log_loss(targets, renormalised, labels=labels),
                                                            rel=1e-9, abs=1e-12)

    onehot = np.eye(num_classes, dtype=int)[targets]
    for c in labels:
        if 0 < onehot[:, c].sum() < n:
            assert report["auc"][c] == pytest.approx(skm.roc_auc_score(onehot[:, c], probs[:, c]))
            assert report["average_precision"][c] == pytest.approx(
                skm.average_precision_score(onehot[:, c], probs[:, c]))
        else:
            assert report["auc"][c] is None
            assert report["average_precision"][c] is None
    defined = [a for a in report["auc"] if a is not None]
    assert report["macro_auc"] == (pytest.approx(np.mean(defined)) if defined else None)
    assert report["micro_auc"] == pytest.approx(skm.roc_auc_score(onehot, probs, average="micro"))

    bins = report["calibration"]["bins"]
    assert sum(bins["count"]) == n
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    fairness = report["fairness"]
    present = [f"c{c}" for c in labels if (targets == c).any()]
    assert fairness["worst_class"] in present
    assert fairness["best_class"] in present
    assert fairness["worst_accuracy"] == pytest.approx(min(recall[np.isin(labels, targets)]))
    assert fairness["best_accuracy"] == pytest.approx(max(recall[np.isin(labels, targets)]))

    curves = report.pop("curves")
    assert len(curves["roc"]) == num_classes
    json.dumps(report, allow_nan=False)


def test_ece_by_hand():
    # 5 bins, bin b holds (b/5, (b+1)/5].
    # sample 0: conf .90 correct -> bin 4; samples 1, 2: conf .70, one wrong one right -> bin 3;
    # sample 3: conf .55 correct -> bin 2.
    # ECE = 1/4*|1 - .9| + 2/4*|.5 - .7| + 1/4*|1 - .55| = .025 + .1 + .1125 = .2375
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45]])
    result = calibration(probs, np.array([0, 1, 1, 0]), bins=5)
    assert result["ece"] == pytest.approx(0.2375)
    assert result["bins"]["count"] == [0, 0, 1, 2, 1]
    assert result["bins"]["accuracy"] == pytest.approx([0, 0, 1, 0.5, 1])
    assert result["bins"]["confidence"] == pytest.approx([0, 0, 0.55, 0.7, 0.9])


def test_perfectly_calibrated_bin_has_zero_ece():
    probs = np.tile([0.7, 0.3], (10, 1))
    targets = np.array([0] * 7 + [1] * 3)  # confidence .7, accuracy .7
    assert calibration(probs, targets)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_confidence_one_lands_in_last_bin():
    result = calibration(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), np.array([0, 1]), bins=10)
    assert result["bins"]["count"] == [0] * 9 + [2]
    assert result["bins"]["accuracy"][-1] == 0.5
    assert result["ece"] == pytest.approx(0.5)


def test_most_confused_order_and_counts():
    cm = np.array([[50, 2, 0], [4, 60, 1], [0, 2, 70]])
    got = most_confused(cm, ["a", "b", "c"])
    assert [(d["true"], d["predicted"], d["count"]) for d in got] == [
        ("b", "a", 4), ("a", "b", 2), ("c", "b", 2), ("b", "c", 1)]  # ties in row-major order; no zeros
    assert got[0]["share_of_true"] == pytest.approx(4 / 65)
    assert got[1]["share_of_true"] == pytest.approx(2 / 52)
    assert [d["count"] for d in most_confused(cm, ["a", "b", "c"], limit=2)] == [4, 2]
    assert most_confused(np.diag([3, 4]), ["a", "b"]) == []


def test_fairness_ignores_absent_class():
    # class 0: 2 samples, one right (recall .5); class 1: 2 samples, both right; class 2: no samples
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    report = classification_report(probs, np.array([0, 0, 1, 1]), ["x", "y", "z"])
    assert report["fairness"] == {"worst_class": "x", "worst_accuracy": 0.5, "best_class": "y",
                                  "best_accuracy": 1.0, "gap": 0.5}
    assert report["auc"][2] is None
    assert report["per_class"][2]["support"] == 0
    report.pop("curves")
    json.dumps(report, allow_nan=False)
