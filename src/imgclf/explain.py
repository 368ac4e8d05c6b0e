"""Where a model looks: Grad-CAM (Selvaraju et al. 2017), saliency (Simonyan et al. 2014) and integrated
gradients (Sundararajan et al. 2017), computed by Captum and drawn over the image."""

from __future__ import annotations

import difflib
import logging
import weakref
from pathlib import Path

import torch

from imgclf.data.transforms import read_image
from imgclf.errors import ImgclfError
from imgclf.evaluate import plots
from imgclf.models.base import Classifier
from imgclf.models.summary import collapsed_note, map_sides
from imgclf.rundir import atomic_write, preprocess_of, run_folder
from imgclf.runtime import is_export, open_model

log = logging.getLogger(__name__)
_DEFAULT_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {min_side: layer name}
METHODS = ("gradcam", "saliency", "integrated-gradients")


def _captum():
    try:
        import captum.attr
    except ImportError as err:
        raise ImgclfError("explanations need Captum: pip install 'imgclf[explain]'.") from err
    return captum.attr


def default_layer(model: Classifier, min_side: int = 4) -> str:
    """The model's Grad-CAM target layer when its map is at least min_side x min_side at the model's input size,
    else the last module before it whose map is (at a tiny input: the last with the largest map). Found once
    per model: a served model explains many images."""
    chosen = _DEFAULT_LAYERS.setdefault(model, {})
    if min_side not in chosen:
        chosen[min_side] = _default_layer(model, min_side)
    return chosen[min_side]


def _default_layer(model: Classifier, min_side: int) -> str:
    sides = map_sides(model)  # one pass on a zero image
    names = [name for name, _, _ in sides]
    upto = sides[: len(names) - names[::-1].index(model.target_layer)] if model.target_layer in names else sides
    need = min(min_side, max(side for _, side, _ in upto))
    chosen = [name for name, side, _ in upto if side >= need][-1]
    if chosen != model.target_layer:
        log.info("Grad-CAM on %s: %s has smaller maps than %dx%d at this input size", chosen, model.target_layer,
                 min_side, min_side)
    return chosen


def layer_of(model: Classifier, name: str | None = None) -> torch.nn.Module:
    """The named module (default: default_layer), with close names in the error."""
    name = name or default_layer(model)
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        raise ImgclfError(f"the model has no layer {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                          "; imgclf summary MODEL lists them."))
    return modules[name]


def attribute(model: Classifier, x: torch.Tensor, target: torch.Tensor, method: str, layer: str | None = None,
              baseline: torch.Tensor | None = None, steps: int = 32) -> torch.Tensor:
    """(B, C, H, W) model inputs -> (B, H, W) attribution maps for class target[i], scaled to [0, 1] per image.

    Saliency is the largest |gradient| over channels; integrated gradients the |attribution| summed over
    channels, from `baseline` (default: zeros in model units, i.e. the mean image; explain_files passes a black
    image, preprocess.normalize(zeros)); Grad-CAM is upsampled to the input size."""
    attr = _captum()
    model.eval()
    x = x.detach().requires_grad_(True)
    if method == "gradcam":
        cam = attr.LayerGradCam(model, layer_of(model, layer)).attribute(x, target=target, relu_attributions=True)
        maps = attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    elif method == "saliency":
        maps = attr.Saliency(model).attribute(x, target=target, abs=True).amax(dim=1)
    elif method == "integrated-gradients":
        base = torch.zeros_like(x) if baseline is None else baseline
        maps = attr.IntegratedGradients(model).attribute(x, base, target=target, n_steps=steps).abs().sum(dim=1)
    else:
        raise ImgclfError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}.")
    maps = maps.detach().clamp(min=0)
    top = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(top > 0, maps / top.clamp(min=1e-12), maps)


def explain_files(run: str | Path, paths: list[Path], methods: tuple[str, ...] = ("gradcam",),
                  target: str | None = None, layer: str | None = None, out: str | Path | None = None
                  ) -> tuple[list[dict], Path]:
    """Explain the model's prediction (or class `target`) for each image: one overlay PNG per image and method,
    and explanations.png with all of them; returns one record per image and the path of explanations.png."""
    if is_export(run):
        raise ImgclfError("explanations need the model's gradients: pass the run directory, not an exported file.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ImgclfError(f"unknown explanation method {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(METHODS)}.")
    if layer is not None and "gradcam" not in methods:
        raise ImgclfError("--layer picks the Grad-CAM layer; add gradcam to the methods or leave --layer out.")
    model, meta = open_model(run)
    if note := collapsed_note(model):
        log.warning("%s %s", meta["architecture"]["name"], note)
    classes, pre = meta["classes"], preprocess_of(meta)
    if target is not None and target not in classes:
        raise ImgclfError(f"--target {target!r} is not one of the model's classes ({', '.join(classes)}).")
    images = [pre.prepare(read_image(path)) for path in paths]  # uint8 (C, H, W) at the model's size
    x = pre(torch.stack(images))
    if "gradcam" in methods:
        layer = layer or default_layer(model)
        layer_of(model, layer)  # an unknown layer fails before any work
    with torch.no_grad():
        probs = torch.softmax(model(x).float() / meta.get("temperature", 1.0), dim=1)
    predicted = probs.argmax(dim=1)
    targets = predicted if target is None else torch.full_like(predicted, classes.index(target))
    # the baseline of integrated gradients: a black image, in the model's normalized units
    baseline = pre.normalize(torch.zeros_like(x[:1])).expand_as(x)
    maps = {m: attribute(model, x, targets, m, layer, baseline) for m in methods}
    out = Path(out) if out else run_folder(run) / "explanations"
    out.mkdir(parents=True, exist_ok=True)
    records, names = [], _unique_stems(paths)
    for i, path in enumerate(paths):
        files = {}
        for m in methods:
            files[m] = out / f"{names[i]}.{m}.png"
            png = plots.overlay(images[i].numpy(), maps[m][i].numpy(), f"{m}: {classes[targets[i]]}")
            atomic_write(files[m], lambda tmp, png=png: tmp.write_bytes(png))
        records.append({"image": str(path), "predicted": classes[predicted[i]],
                        "probability": float(probs[i, predicted[i]]), "explained": classes[targets[i]],
                        "overlays": {m: str(f) for m, f in files.items()}})
    grid = plots.explanation_grid([im.numpy() for im in images], {m: v.numpy() for m, v in maps.items()},
                                  [f"{Path(r['image']).name}: {r['predicted']} ({r['probability']:.2f})"
                                   for r in records])
    atomic_write(out / "explanations.png", lambda tmp: tmp.write_bytes(grid))
    log.info("wrote %d overlays and %s", len(paths) * len(methods), out / "explanations.png")
    return records, out / "explanations.png"


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with -2, -3, ... added to repeats (a/1.png and b/1.png), so no overlay overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return names
