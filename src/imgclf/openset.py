"""Unknown inputs (open-set recognition): a score of how unlike the training data an image is, and a threshold
fitted on the run's validation images above which a prediction is answered `unknown`.

Scores, each higher for less familiar inputs:
- knn: 1 - the cosine similarity of the penultimate features to their k-th nearest neighbour among (up to
  BANK) training images' features (Sun et al. 2022);
- combined: the largest of the energy, knn and feature-norm scores, each standardized on the validation images
  (0 at their median, 1 at their 95th percentile), so an image is unknown when any of them finds it strange;
- energy: -T logsumexp(logits / T) at the temperature fitted on the validation split (Liu et al. 2020);
- msp: 1 - the maximum softmax probability at that temperature (Hendrycks & Gimpel 2017; Guo et al. 2017);
- mahalanobis: the relative Mahalanobis distance of the penultimate features (Ren et al. 2021): the smallest
  distance to a class mean under one covariance shared by the classes (Lee et al. 2018), minus the distance to
  one Gaussian of all training features.
The feature norm ("norm": minus the log of the features' length; noise and flat images excite a network's
features less than its own data) serves only inside `combined`.

The fit is saved beside the weights as open_set.safetensors: the training features (for knn), class means and
precision matrices, the sorted validation scores (so any rejection rate can be chosen later without refitting)
and a self-check: how well the score tells generated noise and flat images from the validation images."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from imgclf.data import Preprocess, Split, TensorSplit, batches
from imgclf.errors import ImgclfError
from imgclf.evaluate.metrics import calibrate
from imgclf.rundir import atomic_write, run_folder

log = logging.getLogger(__name__)

METHODS = ("combined", "knn", "energy", "mahalanobis", "msp")  # the first is the default
PARTS = ("energy", "knn", "norm")  # what `combined` takes the largest of (those of them that hold for the model)
FILE = "open_set.safetensors"
RATE = 0.05  # the share of validation images answered unknown, unless a command says otherwise
BANK = 5_000  # training images the knn bank, class means and covariance are fitted on (a seeded sample beyond)
MAX_VAL = 10_000  # validation images the temperature and the score distributions are fitted on
K = 10  # knn: the distance to the k-th nearest training image (k = 50 for all 50,000 CIFAR-10 images in Sun et
# al. 2022; fewer for a sample of them)
CHECK = 100  # generated images of each kind in the self-check (and as many to choose `combined`'s parts)
CHECK_AUROC = 0.9  # below this against any generated kind, the detector says that it does not work


@dataclass
class OpenSet:
    """A run's fitted unknown-input detector: `method` decides, `rate` of validation images is rejected."""

    method: str
    temperature: float
    means: torch.Tensor  # (K, D) class means of the penultimate features
    precision: torch.Tensor  # (D, D) inverse of the shared covariance
    background: tuple[torch.Tensor, torch.Tensor]  # (D,) mean and (D, D) precision of all training features
    bank: torch.Tensor | None  # (N, D) float16 unit-length training features (None: fitted before knn existed)
    val_scores: dict[str, np.ndarray]  # per score, sorted ascending
    model_sha256: str
    rate: float = RATE
    check: dict[str, float] = field(default_factory=dict)  # AUROC of `method` against each generated kind
    calibration: dict = field(default_factory=dict)  # the temperature fit: samples, ECE before and after
    parts: tuple[str, ...] = PARTS  # the PARTS `combined` takes the largest of

    def threshold(self, rate: float | None = None, method: str | None = None) -> float:
        """The score above which an input is unknown: the (1 - rate) quantile of the validation scores."""
        return float(np.quantile(self.val_scores[method or self.method], 1 - (self.rate if rate is None else rate)))

    @property
    def methods(self) -> tuple[str, ...]:
        """The scores this fit can give (a fit from before knn existed lacks knn and combined)."""
        return tuple(m for m in METHODS if m in self.val_scores)

    @property
    def needs_features(self) -> bool:
        return self.method not in ("energy", "msp")

    @property
    def warning(self) -> str | None:
        """One sentence when the self-check found the detector unable to tell generated strangers from the
        validation images, else None."""
        failed = {kind: auroc for kind, auroc in self.check.items() if auroc < CHECK_AUROC}
        if not failed:
            return None
        found = ", ".join(f"{kind} {auroc:.2f}" for kind, auroc in failed.items())
        return (f"unknown-input detection ({self.method}) cannot tell generated {' and '.join(failed)} from the "
                f"validation images (AUROC {found}; {CHECK_AUROC} wanted): --unknown will accept such images as "
                "one of the classes. Train longer, on more images, or with --train.outlier_exposure 0.5.")

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B,) scores for a batch's logits (B, K) and penultimate features (B, D); without features, only the
        scores that need just the logits."""
        logits = logits.double() / self.temperature
        found = {"msp": 1 - torch.softmax(logits, 1).amax(1),
                 "energy": -self.temperature * torch.logsumexp(logits, 1)}
        if features is None:
            return found
        mean, precision = self.background
        found["mahalanobis"] = (mahalanobis(features, self.means, self.precision)
                                - mahalanobis(features, mean.unsqueeze(0), precision))
        if self.bank is not None:
            found["knn"] = knn(features, self.bank)
            found["norm"] = -features.double().norm(dim=1).clamp(min=1e-12).log()
            if "combined" in self.val_scores:  # (while fitting, not yet)
                found["combined"] = self._combined(found)
        return found

    def _combined(self, found: dict[str, torch.Tensor], parts: tuple[str, ...] | None = None) -> torch.Tensor:
        """The largest of the `parts` scores (default: self.parts), each as (score - median) / (95th percentile
        - median) of its validation scores."""
        standard = []
        for part in parts or self.parts:
            middle, high = np.quantile(self.val_scores[part], (0.5, 0.95))
            standard.append((found[part] - middle) / max(high - middle, 1e-12))
        return torch.stack(standard).amax(0)

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
                "temperature": self.temperature, "validation_images": len(self.val_scores[self.method]),
                "parts": list(self.parts) if self.method == "combined" else None, "check": self.check,
                "warning": self.warning}

    def save(self, folder: Path) -> None:
        tensors = {"means": self.means, "precision": self.precision, "background_mean": self.background[0],
                   "background_precision": self.background[1],
                   **({} if self.bank is None else {"bank": self.bank}),
                   **{f"val_{m}": torch.from_numpy(s.astype(np.float32)) for m, s in self.val_scores.items()}}
        meta = {"method": self.method, "temperature": repr(self.temperature), "model_sha256": self.model_sha256,
                "rate": repr(self.rate), "check": json.dumps(self.check),
                "calibration": json.dumps(self.calibration), "parts": ",".join(self.parts)}
        atomic_write(folder / FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B,) smallest squared Mahalanobis distance of each feature vector (B, D) to the class means (K, D), in
    float32 (the products are the cost; float64 only for the covariance's inverse)."""
    f, mu, p = features.float(), means.float(), precision.float()
    fp = f @ p  # (B, D)
    # (f - mu)^T P (f - mu) = f P f - 2 f P mu + mu P mu, for every class at once: (B, K)
    distances = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ p) * mu).sum(1)
    return distances.amin(1).double()


def knn(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B,) 1 - cosine similarity of each feature vector (B, D) to its K-th nearest in the bank (N, D, unit)."""
    similarity = F.normalize(features.float(), dim=1) @ bank.float().T  # (B, N)
    return 1 - similarity.topk(min(K, bank.shape[0]), dim=1).values[:, -1].double()


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
        model_sha256: str, method: str = METHODS[0], seed: int = 0, num_workers: int = 0,
        val_embedded: tuple[torch.Tensor, torch.Tensor] | None = None) -> OpenSet:
    """Fit every score: the knn bank, class means and shared covariance on (up to BANK of) the training images,
    the temperature and the score distributions on (up to MAX_VAL of) the validation images, then
    the self-check. Without validation images, a held-back fifth of the training sample sets them (images the
    model was trained on, so new images score a little higher and are rejected a little more often than the
    chosen rate). `val_embedded`: the features and logits of all of `val`, when the caller has them already (the
    trainer keeps those of its best validation pass)."""
    if method not in METHODS:
        raise ImgclfError(f"unknown unknown-input method {method!r}; choose one of {', '.join(METHODS)}.")
    rng = np.random.default_rng(seed)
    model.to(memory_format=torch.channels_last)  # embeds 1.7x faster (mnist-fast, this CPU); values are the same
    if val is None:
        train = _sample(train, BANK + BANK // 4, rng)
        order = rng.permutation(len(train))
        val, train = train.take(np.sort(order[:len(train) // 5])), train.take(np.sort(order[len(train) // 5:]))
        log.info("no validation split: the unknown-input threshold is set on %d held-back training images",
                 len(val))
    train = _sample(train, BANK, rng)
    if val_embedded is None or len(val_embedded[1]) != len(val):
        val = _sample(val, MAX_VAL, rng)
        val_embedded = embed(model, val, preprocess, device, num_workers=num_workers)
    val_features, val_logits = val_embedded
    features, _ = embed(model, train, preprocess, device, num_workers=num_workers)
    labels = train.labels
    classes = int(labels.max()) + 1
    f = features.double()
    means = torch.zeros(classes, f.shape[1], dtype=torch.float64).index_add_(0, labels, f)
    means /= torch.bincount(labels, minlength=classes).clamp(min=1).unsqueeze(1).double()
    calibration = calibrate(val_logits.numpy(), val.labels.numpy())
    fitted = OpenSet(method, calibration["temperature"], means.float(), _precision(f - means[labels]),
                     (f.mean(0).float(), _precision(f - f.mean(0))), F.normalize(features, dim=1).half(), {},
                     model_sha256, calibration=calibration)
    found = fitted.scores(val_logits, val_features)
    fitted.val_scores = {m: np.sort(s.numpy()) for m, s in found.items()}
    # the parts are chosen on other generated images than those of the self-check
    fitted.parts = _holding_parts(fitted, found, stranger_scores(model, preprocess, device, fitted, seed + 1))
    fitted.val_scores["combined"] = np.sort(fitted._combined(found).numpy())
    fitted.check = {kind: round(separation(fitted.val_scores[method], scores[method])["auroc"], 4)
                    for kind, scores in stranger_scores(model, preprocess, device, fitted, seed).items()}
    log.info("unknown-input detection (%s) fitted on %d training and %d validation images", method, len(train),
             len(val))
    if fitted.warning:
        log.warning("%s", fitted.warning)
    return fitted


def _sample(split: Split, limit: int, rng: np.random.Generator) -> Split:
    """At most `limit` images of `split`, a seeded sample in their order."""
    return split if len(split) <= limit else split.take(np.sort(rng.choice(len(split), limit, replace=False)))


def generated(channels: int, size: tuple[int, int], count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """(count, C, H, W) uint8 images of no class at a model's input size: uniform noise, Gaussian noise (mean
    128, std 64) and flat colours. No classifier should take them for its own."""
    g = torch.Generator().manual_seed(seed)
    shape = (count, channels, *size)
    return {"uniform noise": (torch.rand(shape, generator=g) * 256).to(torch.uint8),
            "Gaussian noise": (torch.randn(shape, generator=g) * 64 + 128).round().clamp(0, 255).to(torch.uint8),
            "flat images": (torch.rand(count, channels, 1, 1, generator=g) * 256).to(torch.uint8).expand(shape)}


def stranger_scores(model: torch.nn.Module, preprocess: Preprocess, device: torch.device, fitted: OpenSet,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Every score of CHECK generated images of each kind (see generated)."""
    return {kind: score_split(model, TensorSplit(images.contiguous(), torch.zeros(CHECK, dtype=torch.int64)),
                              preprocess, device, fitted)
            for kind, images in generated(preprocess.channels, preprocess.size, CHECK, seed).items()}


def _holding_parts(fitted: OpenSet, val: dict[str, torch.Tensor], strangers: dict[str, dict[str, np.ndarray]]
                   ) -> tuple[str, ...]:
    """The PARTS `combined` takes for this model: of every choice of them, the one that best tells generated
    strangers from the validation images (the highest lowest AUROC over the kinds), with more parts preferred
    within 0.01 of it (each part catches other strangers). A model trained on few photos often gives noise a more
    typical energy or feature norm than a real photo: those parts are then left out."""
    def lowest(parts: tuple[str, ...]) -> float:
        known = fitted._combined(val, parts).numpy()
        return min(separation(known, fitted._combined({p: torch.from_numpy(s[p]) for p in parts}, parts).numpy())
                   ["auroc"] for s in strangers.values())

    choices = {parts: lowest(parts) for n in range(len(PARTS), 0, -1) for parts in combinations(PARTS, n)}
    best = max(choices.values())
    chosen = next(parts for parts, value in choices.items() if value >= best - 0.01)
    if chosen != PARTS:
        log.info("combined unknown-input score: %s left out (it takes generated strangers for familiar images)",
                 ", ".join(sorted(set(PARTS) - set(chosen))))
    return chosen


def _precision(centred: torch.Tensor) -> torch.Tensor:
    """(D, D) float32 inverse covariance of centred float64 features (N, D), with a little ridge: ReLU features
    often have dimensions that never fire, which makes the covariance singular."""
    covariance = centred.T @ centred / len(centred)
    ridge = 1e-6 * float(covariance.diagonal().mean()) + 1e-12
    return torch.linalg.inv(covariance + ridge * torch.eye(len(covariance), dtype=torch.float64)).float().contiguous()


def fitted_for(folder: Path, meta: dict) -> bool:
    """Whether the run has a detector fitted on the weights `meta` describes (read from the file's header)."""
    try:
        with safe_open(str(folder / FILE), "pt") as f:
            return f.metadata().get("model_sha256") == meta.get("sha256")
    except (OSError, SafetensorError):
        return False


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
                         (tensors["background_mean"], tensors["background_precision"]), tensors.get("bank"),
                         {name[4:]: t.numpy() for name, t in tensors.items() if name.startswith("val_")},
                         header["model_sha256"], float(header["rate"]), json.loads(header.get("check", "{}")),
                         json.loads(header.get("calibration", "{}")),
                         tuple(header.get("parts", ",".join(PARTS)).split(",")))
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
        raise ImgclfError(f"{path} is damaged ({err}); fit it again with imgclf evaluate {folder} "
                          "--fit-unknown.") from err
    if fitted.method not in METHODS:
        raise ImgclfError(f"{path} uses the unknown-input method {fitted.method!r}, which this imgclf does not "
                          f"know (it knows {', '.join(METHODS)}); fit it again with imgclf evaluate {folder} "
                          "--fit-unknown.")
    if fitted.method not in fitted.val_scores:
        raise ImgclfError(f"{path} is damaged (no validation scores for its method {fitted.method}); fit it again "
                          f"with imgclf evaluate {folder} --fit-unknown.")
    if fitted.model_sha256 != meta.get("sha256"):
        log.warning("%s was fitted on other weights than %s/model.safetensors and is not used; fit it again "
                    "with imgclf evaluate %s --fit-unknown", path, folder, folder)
        return None
    if fitted.bank is None:
        log.info("%s was fitted by an earlier imgclf (%s score, no self-check); imgclf evaluate %s --fit-unknown "
                 "fits the knn and combined scores that hold on photos", path, fitted.method, folder)
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
    if fitted.warning:
        log.warning("%s", fitted.warning)
    return fitted.with_rate(rate)


def score_split(model: torch.nn.Module, split: Split, preprocess: Preprocess, device: torch.device,
                fitted: OpenSet, num_workers: int = 0) -> dict[str, np.ndarray]:
    """(N,) scores of every method for each image of `split`."""
    features, logits = embed(model, split, preprocess, device, num_workers=num_workers)
    return {m: s.numpy() for m, s in fitted.scores(logits, features).items()}


def separation(known: np.ndarray, unknown: np.ndarray) -> dict:
    """How well a score tells unknown inputs from known ones: ROC AUC (the chance that an unknown input scores
    higher than a known one, ties counting half), and the share of unknown inputs accepted when 95% of the known
    ones are (FPR at 95% TPR)."""
    known = np.sort(known)
    below, up_to = np.searchsorted(known, unknown, "left"), np.searchsorted(known, unknown, "right")
    return {"auroc": float(np.mean(below + (up_to - below) / 2) / len(known)),
            "fpr95": float(np.mean(unknown <= np.quantile(known, 0.95)))}
