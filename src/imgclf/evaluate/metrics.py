"""Classification metrics from predicted probabilities: pure functions of NumPy arrays.

Per-class numbers cover every class 0..K-1 (a class never predicted, or with no samples, gets 0, as
scikit-learn's zero_division=0 gives; with no samples its AUC is undefined). Macro averages are over
the classes that occur in the targets or the predictions, as scikit-learn's default: a model with
10 classes scored on data of only two of them is not penalized for the eight it was never shown."""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def confusion(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    return np.bincount(targets * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros(len(top)), where=bottom > 0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class, from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, predicted + support), "support": support}


def macro(values: np.ndarray, cm: np.ndarray) -> float:
    """Mean of a per-class value over the classes that occur in the targets or the predictions."""
    active = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(values[active].mean()) if active.any() else 0.0


def top_k_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k most probable (ties broken by class order)."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def log_loss(probs: np.ndarray, targets: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log probability of the true class (probabilities clipped to [eps, 1 - eps])."""
    p = np.clip(probs[np.arange(len(targets)), targets].astype(np.float64), eps, 1 - eps)
    return float(-np.log(p).mean())


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error over equal-width confidence bins, and the bins for a reliability diagram.

    ECE = sum over bins of (share of samples) x |accuracy - mean confidence| (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin b holds (b/bins, (b+1)/bins]
    count = np.bincount(which, minlength=bins)
    accuracy = _ratio(np.bincount(which, weights=correct, minlength=bins), count)
    mean_conf = _ratio(np.bincount(which, weights=confidence, minlength=bins), count)
    ece = float((count / len(targets) * np.abs(accuracy - mean_conf)).sum())
    return {"ece": ece, "bins": {"count": count.tolist(), "accuracy": accuracy.tolist(),
                                 "confidence": mean_conf.tolist()}}


def roc_pr(probs: np.ndarray, targets: np.ndarray) -> dict:
    """One-vs-rest ROC and precision-recall curves and areas per class, plus micro and macro averages.

    A class that is absent from the targets (or is every target) has no ROC curve: its AUC is None and
    the macro average is over the other classes."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    num_classes = probs.shape[1]
    onehot = np.eye(num_classes, dtype=int)[targets]
    auc, ap, roc, pr = [], [], [], []
    for c in range(num_classes):
        defined = 0 < onehot[:, c].sum() < len(targets)
        auc.append(float(roc_auc_score(onehot[:, c], probs[:, c])) if defined else None)
        ap.append(float(average_precision_score(onehot[:, c], probs[:, c])) if defined else None)
        roc.append(roc_curve(onehot[:, c], probs[:, c])[:2] if defined else None)
        pr.append(precision_recall_curve(onehot[:, c], probs[:, c])[:2] if defined else None)
    defined = [a for a in auc if a is not None]
    micro = num_classes > 1 and len(targets) > 0
    return {"auc": auc, "macro_auc": float(np.mean(defined)) if defined else None,
            "micro_auc": float(roc_auc_score(onehot.ravel(), probs.ravel())) if micro else None,
            "average_precision": ap,
            "macro_average_precision": float(np.mean([a for a in ap if a is not None])) if defined else None,
            "curves": {"roc": roc, "micro_roc": roc_curve(onehot.ravel(), probs.ravel())[:2] if micro else None,
                       "pr": pr}}


def most_confused(cm: np.ndarray, classes: list[str], limit: int = 10) -> list[dict]:
    """The most frequent (true, predicted) mistakes, most frequent first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:limit]
    pairs = [np.unravel_index(i, cm.shape) for i in order]
    return [{"true": classes[t], "predicted": classes[p], "count": int(off[t, p]),
             "share_of_true": float(off[t, p] / max(1, cm[t].sum()))} for t, p in pairs if off[t, p] > 0]


def classification_report(probs: np.ndarray, targets: np.ndarray, classes: list[str], top_k: int = 5) -> dict:
    """Every metric of a (N, K) probability matrix against (N,) true labels, as JSON-ready values
    (the ROC and PR curves come back separately under 'curves', for plotting)."""
    num_classes = len(classes)
    predicted = probs.argmax(axis=1)
    cm = confusion(targets, predicted, num_classes)
    stats = per_class(cm)
    support = stats["support"]
    weights = support / max(1, support.sum())
    rows = [{"class": name, **{m: float(stats[m][c]) for m in ("precision", "recall", "f1")},
             "support": int(support[c])} for c, name in enumerate(classes)]
    present = support > 0  # a class with no test samples has no accuracy to be worst or best at
    recall = np.where(present, stats["recall"], np.nan)
    worst, best = (int(np.nanargmin(recall)), int(np.nanargmax(recall))) if present.any() else (0, 0)
    ranking = roc_pr(probs, targets)
    curves = ranking.pop("curves")
    report = {
        "samples": len(targets),
        "accuracy": float((predicted == targets).mean()),
        "top_k": {"k": min(top_k, num_classes), "accuracy": top_k_accuracy(probs, targets, min(top_k, num_classes))},
        "log_loss": log_loss(probs, targets),
        "macro": {m: macro(stats[m], cm) for m in ("precision", "recall", "f1")},
        "weighted": {m: float((stats[m] * weights).sum()) for m in ("precision", "recall", "f1")},
        "per_class": rows,
        "confusion": cm.tolist(),
        "confusion_normalized": (cm / np.maximum(1, cm.sum(axis=1, keepdims=True))).round(6).tolist(),
        **ranking,
        "calibration": calibration(probs, targets),
        "most_confused": most_confused(cm, classes),
        "fairness": {"worst_class": classes[worst], "worst_accuracy": float(stats["recall"][worst]),
                     "best_class": classes[best], "best_accuracy": float(stats["recall"][best]),
                     "gap": float(stats["recall"][best] - stats["recall"][worst])},
    }
    return {**report, "curves": curves}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrate(logits: np.ndarray, targets: np.ndarray) -> dict:
    """Temperature scaling fitted on held-out logits, with the expected calibration error there before and after."""
    temperature = fit_temperature(logits, targets)
    return {"temperature": temperature, "samples": len(targets),
            "val_ece_before": calibration(softmax(logits), targets)["ece"],
            "val_ece_after": calibration(softmax(logits, temperature), targets)["ece"]}


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimizing the log loss of softmax(logits / T).

    The loss is convex in 1/T, so a bounded scalar search finds the optimum; T in [0.05, 20]."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda inverse: log_loss(softmax(logits, 1 / inverse), targets),
                             bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-6})
    return float(1 / result.x)
