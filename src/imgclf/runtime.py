"""Exported models (ONNX through onnxruntime, TorchScript) behind the same call as a PyTorch classifier.

An export is a model file plus `<file>.json` (classes, the preprocessing its input needs, provenance),
so `predict` and `evaluate` take it wherever they take a run directory."""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from imgclf.device import pick_device
from imgclf.errors import ImgclfError, first_line
from imgclf.rundir import load_model, read_meta, sha256

log = logging.getLogger(__name__)

SUFFIXES = (".onnx", ".torchscript.pt")


def is_export(path: str | Path) -> bool:
    """Whether `path` names an exported model file (as opposed to a run directory or its files)."""
    return Path(path).is_file() and Path(path).name.endswith(SUFFIXES)


class ExportedModel:
    """Calls an exported model on (B, C, H, W) float tensors and returns logits, like a Classifier in eval mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".onnx":
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise ImgclfError("running ONNX models needs onnxruntime: pip install 'imgclf[export]'.") from err
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch, for fair timings
            try:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own exception types for bad files
                raise ImgclfError(f"{path} is not a valid ONNX model ({first_line(err)}); export it again.") from err
            self.input = self.session.get_inputs()[0].name
        else:
            self.module = _torchscript(path)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "session"):
            array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(self.session.run(None, {self.input: array})[0])
        with torch.inference_mode():
            return self.module(images.cpu())

    def eval(self) -> ExportedModel:
        return self

    def to(self, device: torch.device | str) -> ExportedModel:
        if torch.device(device).type != "cpu":
            raise ImgclfError(f"exported models run on the CPU here; use --device cpu (got {device}).")
        return self


def _torchscript(path: Path) -> torch.jit.ScriptModule:
    """A TorchScript archive's module; anything else (a pickle, a torch.save file) is refused, never unpickled."""
    try:
        if not zipfile.is_zipfile(path):  # TorchScript archives are zip files; a plain pickle is not even opened
            raise RuntimeError("not a zip archive")
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still loads and runs
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as err:  # torch.jit.load reads the archive with its own restricted unpickler
        raise ImgclfError(f"{path} is not a TorchScript model ({first_line(err)}); export it again with imgclf "
                          "export --format torchscript.") from err


def load_exported(path: str | Path) -> tuple[ExportedModel, dict]:
    """An exported model file and the metadata beside it (<file>.json)."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not meta_path.is_file():
        raise ImgclfError(f"{meta_path} is missing: an exported model needs the JSON written beside it "
                          "(classes and preprocessing); export it again with imgclf export.")
    meta = read_meta(meta_path, "export the model again", exported=True)
    if sha256(path) != meta["sha256"]:
        raise ImgclfError(f"{path} does not match the checksum in {meta_path.name}: the file is damaged or was "
                          "replaced. Export it again.")
    return ExportedModel(path), meta


def onnx_twin(run: Path, meta: dict) -> ExportedModel | None:
    """The run's ONNX export (RUN/model.onnx) if it was made from these very weights, in float32 with the same
    input, and onnxruntime is installed: it computes the same probabilities (export checks parity) several times
    faster than PyTorch on a CPU for small models. None otherwise (a stale export is logged)."""
    path = run / "model.onnx"
    if not path.is_file():
        return None
    try:
        model, exported = load_exported(path)
    except ImgclfError as err:
        log.warning("not using %s: %s", path, err)
        return None
    if (exported["source"]["sha256"] != meta["sha256"] or exported["quantize"]
            or exported["normalization_embedded"] or exported["preprocess"] != meta["preprocess"]):
        log.warning("not using %s: it was exported from other weights or with another input; export the run again "
                    "to serve it with onnxruntime.", path)
        return None
    return model


def device_for(model: torch.nn.Module | ExportedModel, device: str) -> torch.device:
    """The device to run on: 'auto' means the CPU for an exported model (onnxruntime and TorchScript run there)."""
    return pick_device("cpu" if isinstance(model, ExportedModel) and device == "auto" else device)


def open_model(path: str | Path):
    """A run directory's PyTorch model, or an exported model file, with its metadata."""
    if Path(path).name.endswith(SUFFIXES) and not Path(path).is_file():
        raise ImgclfError(f"there is no exported model {path}; create it with imgclf export RUN (see imgclf export "
                          "--help).")
    return load_exported(path) if is_export(path) else load_model(path)
