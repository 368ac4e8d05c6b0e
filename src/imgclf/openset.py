"""Unknown inputs (open-set recognition): a score of how unlike the training data an image is, and a threshold
fitted on the run's validation images above which a prediction is answered `unknown`.

Three scores, each higher for less familiar inputs:
- msp: 1 - the maximum softmax probability at a temperature fitted on the validation split (the baseline of
  Hendrycks & Gimpel 2017, with temperature scaling as in Guo et al. 2017);
- energy: -T logsumexp(logits / T) at that temperature (Liu et al. 2020);
- mahalanobis: the relative Mahalanobis distance of the penultimate features (Ren et al. 2021): the smallest
  distance to a class mean under one covariance shared by the classes (Lee et al. 2018), minus the distance to
  one Gaussian of all training features, which cancels what every image has in common; fitted on training images.

The fit is saved beside the weights as open_set.safetensors: class means, precision matrix and the sorted
validation scores, so any rejection rate can be chosen later without refitting."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from imgclf.data import Preprocess, Split, batches
from imgclf.errors import ImgclfError
from imgclf.evaluate.metrics import fit_temperature
from imgclf.rundir import atomic_write, run_folder

log = logging.getLogger(__name__)

METHODS = ("energy", "mahalanobis", "msp")  # the first is the default
FILE = "open_set.safetensors"
RATE = 0.05  # the share of validation images answered unknown, unless a command says otherwise
MAX_FIT = 20_000  # training images the class means and covariance are fitted on (a seeded sample beyond that)


@dataclass
class OpenSet:
    """A run's fitted unknown-input detector: `method` decides, `rate` of validation images is rejected."""

    method: str
    temperature: float
    means: torch.Tensor  # (K, D) class means of the penultimate features
    precision: torch.Tensor  # (D, D) inverse of the shared covariance
    background: tuple[torch.Tensor, torch.Tensor]  # (D,) mean and (D, D) precision of all training features
    val_scores: dict[str, np.ndarray]  # per method, sorted ascending
    model_sha256: str
    rate: float = RATE

    def threshold(self, rate: float | None = None, method: str | None = None) -> float:
        """The score above which an input is unknown: the (1 - rate) quantile of the validation scores."""
        return float(np.quantile(self.val_scores[method or self.method], 1 - (self.rate if rate is None else rate)))

    @property
    def needs_features(self) -> bool:
        return self.method == "mahalanobis"

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B,) scores of every method for a batch's logits (B, K) and penultimate features (B, D); without
        features, the methods that need only logits."""
        logits = logits.double() / self.temperature
        found = {"msp": 1 - torch.softmax(logits, 1).amax(1),
                 "energy": -self.temperature * torch.logsumexp(logits, 1)}
        if features is not None:
            mean, precision = self.background
            found["mahalanobis"] = (mahalanobis(features, self.means, self.precision)
                                    - mahalanobis(features, mean.unsqueeze(0), precision))
        return found

    def with_rate(self, rate: float | None) -> OpenSet:
        """The same detector rejecting `rate` of validation images (None: as fitted)."""
        if rate is None:
            return self
        if not 0 < rate < 1:
            raise ImgclfError(f"the share of validation images to answer unknown must be in (0, 1), got {rate}; "
                              "try 0.05.")
        return dataclasses.replace(self, rate=rate)

    def describe(self) -> dict:
        """What a report or an API says about it."""
        return {"method": self.method, "rate": self.rate, "threshold": self.threshold(),
                "temperature": self.temperature, "validation_images": len(self.val_scores[self.method])}

    def save(self, folder: Path) -> None:
        tensors = {"means": self.means, "precision": self.precision, "background_mean": self.background[0],
                   "background_precision": self.background[1],
                   **{f"val_{m}": torch.from_numpy(s.astype(np.float32)) for m, s in self.val_scores.items()}}
        meta = {"method": self.method, "temperature": repr(self.temperature), "model_sha256": self.model_sha256,
                "rate": repr(self.rate)}
        atomic_write(folder / FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B,) smallest squared Mahalanobis distance of each feature vector (B, D) to the class means (K, D)."""
    f, mu, p = features.double(), means.double(), precision.double()
    fp = f @ p  # (B, D)
    # (f - mu)^T P (f - mu) = f P f - 2 f P mu + mu P mu, for every class at once: (B, K)
    distances = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ p) * mu).sum(1)
    return distances.amin(1)


def embed(model: torch.nn.Module, split: Split, preprocess: Preprocess, device: torch.device,
          batch_size: int = 500, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) penultimate features and (N, K) logits of `model` (put in eval mode) on `split`, on the CPU."""
    features, logits = [], []
    model.eval()
    with torch.inference_mode():
        for x, _ in batches(split, preprocess, batch_size, device=device, num_workers=num_workers):
            f, z = forward(model, x)
            features.append(f.float().cpu())
            logits.append(z.cpu())
    return torch.cat(features), torch.cat(logits)


def forward(model: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) penultimate features and (B, K) float32 logits of a batch; `tta`: features averaged with the
    mirrored batch's (the head is linear, so the logits are the mean logits too)."""
    features = model.forward_features(x)
    if tta:
        features = (features + model.forward_features(x.flip(-1))) / 2
    return features, model.forward_head(features).float()


def fit(model: torch.nn.Module, train: Split, val: Split | None, preprocess: Preprocess, device: torch.device, *,
        model_sha256: str, method: str = METHODS[0], seed: int = 0, num_workers: int = 0) -> OpenSet:
    """Fit every score's statistics: class means and shared covariance on (up to MAX_FIT of) the training
    images, the temperature and the score distributions on the validation images. Without validation images,
    a held-back fifth of the training sample sets them (images the model was trained on, so new images score a
    little higher and are rejected a little more often than the chosen rate)."""
    rng = np.random.default_rng(seed)
    if len(train) > MAX_FIT:
        train = train.take(np.sort(rng.choice(len(train), MAX_FIT, replace=False)))
    if val is None:
        order = rng.permutation(len(train))
        val, train = train.take(np.sort(order[:len(train) // 5])), train.take(np.sort(order[len(train) // 5:]))
        log.info("no validation split: the unknown-input threshold is set on %d held-back training images",
                 len(val))
    features, _ = embed(model, train, preprocess, device, num_workers=num_workers)
    labels = train.labels
    classes = int(labels.max()) + 1
    f = features.double()
    means = torch.zeros(classes, f.shape[1], dtype=torch.float64).index_add_(0, labels, f)
    means /= torch.bincount(labels, minlength=classes).clamp(min=1).unsqueeze(1).double()
    val_features, val_logits = embed(model, val, preprocess, device, num_workers=num_workers)
    temperature = fit_temperature(val_logits.numpy(), val.labels.numpy())
    fitted = OpenSet(method, temperature, means.float(), _precision(f - means[labels]),
                     (f.mean(0).float(), _precision(f - f.mean(0))), {}, model_sha256)
    fitted.val_scores = {m: np.sort(s.numpy()) for m, s in fitted.scores(val_logits, val_features).items()}
    log.info("unknown-input detection (%s) fitted on %d training and %d validation images", method, len(train),
             len(val))
    return fitted


def _precision(centred: torch.Tensor) -> torch.Tensor:
    """(D, D) float32 inverse covariance of centred float64 features (N, D), with a little ridge: ReLU features
    often have dimensions that never fire, which makes the covariance singular."""
    covariance = centred.T @ centred / len(centred)
    ridge = 1e-6 * float(covariance.diagonal().mean()) + 1e-12
    return torch.linalg.inv(covariance + ridge * torch.eye(len(covariance), dtype=torch.float64)).float().contiguous()


def load(folder: Path, meta: dict) -> OpenSet | None:
    """The run's fitted detector, or None when it has none or it was fitted on other weights (logged)."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata()
        tensors = load_file(str(path))
        fitted = OpenSet(header["method"], float(header["temperature"]), tensors["means"], tensors["precision"],
                         (tensors["background_mean"], tensors["background_precision"]),
                         {m: tensors[f"val_{m}"].numpy() for m in METHODS}, header["model_sha256"],
                         float(header["rate"]))
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
        raise ImgclfError(f"{path} is damaged ({err}); fit it again with imgclf evaluate {folder} "
                          "--fit-unknown.") from err
    if fitted.model_sha256 != meta.get("sha256"):
        log.warning("%s was fitted on other weights than %s/model.safetensors and is not used; fit it again "
                    "with imgclf evaluate %s --fit-unknown", path, folder, folder)
        return None
    return fitted


def required(path: str | Path, model: object, meta: dict, rate: float | None = None) -> OpenSet:
    """The fitted detector, at `rate`, of a model opened from `path` (a run directory or a file in it), or one
    clear error: an exported model has none, and a run without one is told how to fit it."""
    if not isinstance(model, torch.nn.Module):
        raise ImgclfError("--unknown needs the run directory (its unknown-input detection uses the PyTorch model), "
                          "not an exported model file.")
    folder = run_folder(path)
    fitted = load(folder, meta)
    if fitted is None:
        raise ImgclfError(f"{folder} has no unknown-input detection fitted for these weights ({FILE}); fit it "
                          f"with imgclf evaluate {folder} --fit-unknown (runs trained now fit it at the end of "
                          "training).")
    return fitted.with_rate(rate)


def score_split(model: torch.nn.Module, split: Split, preprocess: Preprocess, device: torch.device,
                fitted: OpenSet, num_workers: int = 0) -> dict[str, np.ndarray]:
    """(N,) scores of every method for each image of `split`."""
    features, logits = embed(model, split, preprocess, device, num_workers=num_workers)
    return {m: s.numpy() for m, s in fitted.scores(logits, features).items()}


def separation(known: np.ndarray, unknown: np.ndarray) -> dict:
    """How well a score tells unknown inputs from known ones: ROC AUC, and the share of unknown inputs accepted
    when 95% of the known ones are (FPR at 95% TPR)."""
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return {"auroc": float(roc_auc_score(truth, np.r_[known, unknown])),
            "fpr95": float(np.mean(unknown <= np.quantile(known, 0.95)))}
