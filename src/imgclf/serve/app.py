"""The HTTP service: a FastAPI app factory around a trained or exported model.

POST /v1/predict, /v1/predict/batch and /v1/feedback; GET /v1/model, /health/live, /health/ready, /metrics.
Every response carries the answering model's version in the X-Model-Version header."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imgclf.data.transforms import image_to_tensor
from imgclf.rundir import preprocess_of
from imgclf.runtime import open_model
from imgclf.serve.batcher import Batcher, Overloaded
from imgclf.serve.feedback import FeedbackStore

log = logging.getLogger(__name__)
FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF"}


@dataclass
class ServeConfig:
    """Service limits and behaviour; every one is a flag of imgclf serve."""

    max_batch: int = 64  # largest forward pass
    max_wait_ms: float = 2.0  # how long a request waits for others to share its batch
    max_queue: int = 512  # queued images beyond this get 503
    max_body_mb: float = 4.0  # request bodies above this get 413, before parsing
    max_pixels: int = 4096 * 4096  # images above this get 413, before decoding (decompression bombs)
    max_images: int = 64  # images per batch request
    deadline_ms: float = 5000  # a request not answered by then gets 504
    top_k: int = 5
    invert: str = "none"  # none, auto (dark-on-light photos of digits for MNIST-style models), always
    feedback_db: str | None = "feedback.db"  # SQLite file; None: feedback disabled (503)
    remember: int = 10_000  # recent predictions whose id /v1/feedback accepts
    admin_token: str | None = None  # enables POST /admin/reload (off when None)
    models_dir: str = "runs"  # the only folder reload takes runs from


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode(data: bytes, max_pixels: int) -> torch.Tensor:
    """Image bytes -> uint8 (C, H, W), EXIF orientation applied, the first frame of an animation; errors as
    ApiError (400 empty, 415 not an image or an unsupported format, 413 too many pixels, 422 damaged)."""
    if not data:
        raise ApiError(400, "the image is empty; send the bytes of a PNG, JPEG, WebP, BMP or GIF file.")
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError):
        raise ApiError(415, "the data is not an image; send a PNG, JPEG, WebP, BMP or GIF file.") from None
    if image.format not in FORMATS:
        raise ApiError(415, f"{image.format} images are not accepted; send PNG, JPEG, WebP, BMP or GIF.")
    width, height = image.size
    if width * height > max_pixels:  # checked on the header, before any pixel is decoded
        raise ApiError(413, f"the image has {width}x{height} pixels, more than the {max_pixels:,} allowed; "
                            "send a smaller image.")
    try:
        image.seek(0)
        return image_to_tensor(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ApiError(422, f"the image is damaged or truncated ({err}); send the whole file.") from None


class _BodyLimit:
    """ASGI middleware: a body larger than `limit` bytes gets 413 before any parsing (the body is read here,
    up to the limit, and replayed to the app)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _too_large(self.limit, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


class _Observe:
    """ASGI middleware: counts and times every request by route and status, and names the model version in an
    X-Model-Version header (plain ASGI: Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-model-version", self.service.version.encode())]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "other"  # no label per unknown URL
            self.service.requests.labels(path, str(status)).inc()
            self.service.latency.labels(path).observe(time.perf_counter() - started)


async def _too_large(limit: int, send) -> None:
    body = json.dumps({"error": f"the request body is larger than {limit / 2**20:.1f} MiB; send a smaller "
                                "image or fewer images."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Service:
    """The loaded model, its batcher, the feedback store and the metrics of one app."""

    def __init__(self, model_path: str | Path, config: ServeConfig) -> None:
        self.config = config
        self.use(*self.load(model_path))
        self.recent: OrderedDict[str, tuple[bytes, str, str]] = OrderedDict()  # id -> (image, predicted, version)
        self.ready = False
        registry = self.registry = CollectorRegistry()
        self.requests = Counter("imgclf_requests", "HTTP requests", ["path", "status"], registry=registry)
        self.latency = Histogram("imgclf_request_seconds", "request latency", ["path"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.batch_sizes = Histogram("imgclf_batch_size", "images per forward pass", registry=registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("imgclf_queue_depth", "images waiting for a forward pass", registry=registry)
        self.feedback_count = Counter("imgclf_feedback", "feedback rows stored", registry=registry)
        self.batcher = Batcher(self._infer, config.max_batch, config.max_wait_ms, config.max_queue,
                               on_batch=self.batch_sizes.observe)
        self.store = FeedbackStore(config.feedback_db) if config.feedback_db else None

    @staticmethod
    def load(path: str | Path) -> tuple:
        """A model, its metadata and preprocessing, warmed up by one inference."""
        model, meta = open_model(path)
        model, preprocess = model.eval(), preprocess_of(meta)
        with torch.inference_mode():
            model(torch.zeros(1, preprocess.channels, *preprocess.size))
        name = meta["architecture"]["name"] if "architecture" in meta else Path(path).name
        return model, meta, preprocess, name

    def use(self, model, meta: dict, preprocess, name: str) -> None:
        self.model, self.meta, self.preprocess, self.name = model, meta, preprocess, name
        self.classes: list[str] = meta["classes"]
        self.version = meta["sha256"][:12]

    async def reload(self, body: dict, authorization: str | None) -> dict:
        """Swap in another run of the models folder once it has loaded and warmed up; on any failure the
        current model keeps serving."""
        token = self.config.admin_token
        if not authorization or not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "reload needs the header Authorization: Bearer <the server's admin token>.")
        folder = Path(self.config.models_dir).resolve()
        name = body.get("run")
        target = (folder / name).resolve() if isinstance(name, str) and "://" not in name else None
        if target is None or not target.is_relative_to(folder) or target == folder:
            raise ApiError(422, f'send {{"run": "<a run directory or model file inside {folder}>"}}; URLs and '
                                "paths outside that folder are refused.")
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(None, self.load, target)
        except Exception as err:  # a damaged or foreign file: say why, keep the current model
            raise ApiError(422, f"cannot load {name} ({str(err).splitlines()[0]}); still serving "
                                f"{self.name} {self.version}.") from None
        await loop.run_in_executor(self.batcher.executor, self.use, *loaded)  # between two batches
        log.info("reloaded: now serving %s (version %s)", self.name, self.version)
        return {"name": self.name, "version": self.version, "run": str(target)}

    def _infer(self, x: torch.Tensor) -> list[list[float]]:
        """(B, C, H, W) -> B rows of class probabilities, as plain lists (cheap for the event loop to read)."""
        with torch.inference_mode():
            return torch.softmax(self.model(x).float() / self.meta.get("temperature", 1.0), dim=1).tolist()

    def prepare(self, data: bytes) -> torch.Tensor:
        """Image bytes -> the (C, H, W) float input the model takes, with its saved preprocessing."""
        image = decode(data, self.config.max_pixels)
        invert = self.config.invert == "always" or (self.config.invert == "auto" and _light_background(image))
        return self.preprocess((255 - image if invert else image).unsqueeze(0))[0]

    async def predict(self, data: bytes) -> dict:
        started = time.perf_counter()
        x = self.prepare(data)
        self.queue_depth.set(self.batcher.depth())
        try:
            probs = await asyncio.wait_for(self.batcher.submit(x), self.config.deadline_ms / 1000)
        except Overloaded:
            raise ApiError(503, "the server is busy; retry in a second.") from None
        except TimeoutError:
            raise ApiError(504, f"no answer within {self.config.deadline_ms:.0f} ms; retry later.") from None
        best = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:self.config.top_k]
        top = [{"label": self.classes[i], "probability": probs[i]} for i in best]
        prediction_id = uuid.uuid4().hex
        self.recent[prediction_id] = (data, top[0]["label"], self.version)
        while len(self.recent) > self.config.remember:
            self.recent.popitem(last=False)
        return {"prediction_id": prediction_id, "label": top[0]["label"], "top": top,
                "model": {"name": self.name, "version": self.version},
                "timing_ms": round((time.perf_counter() - started) * 1000, 3)}

    def feedback(self, body: dict) -> tuple[dict, bool]:
        if self.store is None:
            raise ApiError(503, "feedback is disabled on this server (start it with --feedback-db PATH).")
        label, prediction_id, key = body.get("label"), body.get("prediction_id"), body.get("idempotency_key")
        if label not in self.classes:
            raise ApiError(422, f"label {label!r} is not one of the model's classes ({', '.join(self.classes)}).")
        if prediction_id is not None:
            if prediction_id not in self.recent:
                raise ApiError(422, f"unknown prediction_id {prediction_id!r} (this server keeps the last "
                                    f"{self.config.remember:,}); send the image itself instead.")
            image, predicted, version = self.recent[prediction_id]
        elif body.get("image") is not None:
            image, predicted, version = _base64(body["image"]), None, self.version
            decode(image, self.config.max_pixels)  # only images are stored
        else:
            raise ApiError(422, "feedback needs a prediction_id or the image (base64), and the label.")
        row, new = self.store.add(label, image, predicted=predicted, prediction_id=prediction_id,
                                  model_version=version, idempotency_key=key)
        if new:
            self.feedback_count.inc()
        return {"feedback_id": row, "label": label, "predicted": predicted, "stored": new}, new


def _light_background(image: torch.Tensor) -> bool:
    """Whether the border of a uint8 (C, H, W) image is mostly light (a dark digit on paper)."""
    border = torch.cat([image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], dim=-1)
    return float(border.float().mean()) > 127


def _base64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, "image must be a base64 string.")
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image is not valid base64.") from None


async def _images(request: Request, many: bool) -> list[bytes]:
    """The image bytes of a request: multipart fields (file, or files for a batch) or JSON base64."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        uploads = form.getlist("files" if many else "file") or form.getlist("file" if many else "files")
        if not uploads or isinstance(uploads[0], str):
            raise ApiError(422, f"send the image as the multipart field {'files' if many else 'file'!r}.")
        return [await upload.read() for upload in uploads]
    if kind.startswith("application/json"):
        body = await _json(request)
        values = body.get("images") if many else [body.get("image")]
        if not isinstance(values, list) or not values or any(v is None for v in values):
            raise ApiError(422, 'send {"images": [base64, ...]}.' if many else 'send {"image": base64}.')
        return [_base64(v) for v in values]
    raise ApiError(415, "send multipart/form-data (an image file) or application/json (base64).")


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object.")
    return body


_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                   "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "properties": {"image": {"type": "string"}}}}}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string"}}}}}}}}
_FEEDBACK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "prediction_id": {"type": "string"}, "image": {"type": "string"},
        "idempotency_key": {"type": "string"}}}}}}}


def create_app(model_path: str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The service for a run directory or an exported model file; the model loads and warms up at startup."""
    config = config or ServeConfig()
    service = Service(model_path, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()  # the model was warmed up when it loaded
        service.ready = True
        log.info("serving %s (version %s)", service.name, service.version)
        yield
        service.ready = False
        await service.batcher.stop()  # what was accepted is answered before the process exits
        if service.store:
            service.store.close()

    app = FastAPI(title="imgclf", version="1", lifespan=lifespan,
                  description=f"Image classification with {service.name}.")
    app.state.service = service

    app.add_middleware(_BodyLimit, limit=int(config.max_body_mb * 2**20))
    app.add_middleware(_Observe, service=service)  # added last: the outermost, it sees every answer

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)

    @app.post("/v1/predict", openapi_extra=_IMAGE_BODY, summary="classify one image")
    async def predict(request: Request) -> dict:
        return await service.predict((await _images(request, many=False))[0])

    @app.post("/v1/predict/batch", openapi_extra=_BATCH_BODY, summary="classify several images")
    async def predict_batch(request: Request) -> dict:
        images = await _images(request, many=True)
        if len(images) > config.max_images:
            raise ApiError(413, f"{len(images)} images in one request, more than the {config.max_images} allowed.")
        return {"predictions": await asyncio.gather(*(service.predict(data) for data in images))}

    @app.post("/v1/feedback", openapi_extra=_FEEDBACK_BODY, status_code=201, summary="correct a prediction")
    async def feedback(request: Request) -> Response:
        body = await _json(request)
        result, new = await asyncio.get_running_loop().run_in_executor(None, service.feedback, body)
        return JSONResponse(result, status_code=201 if new else 200)

    if config.admin_token:
        @app.post("/admin/reload", summary="swap in another run of the models folder (needs the admin token)")
        async def reload(request: Request) -> dict:
            return await service.reload(await _json(request), request.headers.get("authorization"))

    @app.get("/v1/model", summary="classes, input and version of the model")
    async def model() -> dict:
        return {"name": service.name, "version": service.version, "classes": service.classes,
                "input": service.preprocess.to_dict(), "temperature": service.meta.get("temperature", 1.0),
                "metrics": service.meta.get("metrics", {}), "invert": config.invert}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "static" / "index.html").read_text())

    @app.get("/health/live", summary="the process is up")
    async def live() -> dict:
        return {"status": "live"}

    @app.get("/health/ready", summary="the model is loaded and warmed up")
    async def ready() -> JSONResponse:
        return JSONResponse({"status": "ready" if service.ready else "starting"},
                            status_code=200 if service.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        service.queue_depth.set(service.batcher.depth())
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app
