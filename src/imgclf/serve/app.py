"""The HTTP service: a FastAPI app factory around a trained or exported model.

POST /v1/predict, /v1/predict/batch and /v1/feedback; GET /v1/model, /v1/queue (the labelling queue),
/health/live, /health/ready, /metrics; the web pages / and /queue.
Every response carries the answering model's version in the X-Model-Version header."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import ctypes
import gc
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import re
import reprlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.exceptions import HTTPException

from imgclf import openset
from imgclf.active import margins
from imgclf.data.transforms import GRAY_MODES, Preprocess, image_to_tensor
from imgclf.errors import ImgclfError, first_line
from imgclf.openset import OpenSet
from imgclf.rundir import preprocess_of
from imgclf.runtime import ExportedModel, onnx_twin, open_model
from imgclf.serve.batcher import Batcher, Overloaded
from imgclf.serve.feedback import QUEUE_ORDERS, FeedbackStore, Kept, StoreError, StoreFull
from imgclf.serve.recent import Recent, Remembered

log = logging.getLogger(__name__)
T = TypeVar("T")
FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF"}  # MPO: JPEG with extra pictures, as phones write
INLINE = 128 * 128  # images of at most this many pixels (and INLINE_BYTES) are read on the event loop, others in a pool
INLINE_BYTES = 64 * 1024  # (a thread hop costs more than reading a small image)
DECODERS = 2  # images decoded at once in the pool: each holds its full-size pixels for a moment (memory) and a core
REDUCING_GAP = 3  # large images are reduced (JPEG draft, box filter) to no less than 3x the model's side first
TRIM = 4_000_000  # after decoding more pixels than this, freed memory is handed back to the system
DRAWABLE = 32  # single-channel models up to this many pixels a side get the drawing pad (digit-like inputs)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"  # JSON and PNG answers: nothing to load, never framed
DOCS_POLICY = "frame-ancestors 'none'"  # --docs pages load Swagger UI and ReDoc (inline script) from their CDN
KEEP_BACKLOG = 16  # batches waiting to be offered to the kept sample; beyond, a batch is not offered (overload)
QUEUE_LIMIT = 200  # the most images one /v1/queue answer lists
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp",
               "BMP": "image/bmp", "GIF": "image/gif"}  # of the FORMATS, for a kept image sent back


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
    feedback_db: str | None = None  # SQLite file or database URL; None: feedback disabled (503)
    remember: int = 10_000  # recent predictions whose id /v1/feedback accepts,
    remember_mb: float = 256.0  # within this much memory of image bytes
    admin_token: str | None = None  # enables POST /admin/reload (off when None)
    models_dir: str = "runs"  # the only folder reload takes runs from
    recent_db: str | None = None  # where the remembered predictions live (shared by workers); None: a temp file
    runtime: str = "auto"  # auto: a run's current ONNX export computes predictions (onnxruntime); torch: PyTorch
    feedback_token: str | None = None  # when set, POST /v1/feedback needs it (Authorization: Bearer)
    feedback_per_minute: float = 60.0  # feedback posts per client address, in bursts of as many (429 beyond)
    feedback_max_rows: int = 100_000  # corrections the feedback store may hold (507 beyond)
    feedback_max_mb: float = 1024.0  # and MiB of their images
    header_timeout_s: float = 10.0  # a connection whose request headers are not complete by then is closed
    body_timeout_s: float = 30.0  # a request body not complete by then gets 408
    max_connections: int = 1000  # requests arriving while more connections are open get 503
    max_buffered_mb: float = 64.0  # request bodies being received, all together; beyond it new ones get 503
    docs: bool = False  # serve /docs and /redoc (they load Swagger UI and ReDoc from a CDN)
    allowed_hosts: tuple[str, ...] | None = None  # Host header names answered (others get 400); None: any
    max_aspect: float = 32.0  # images whose longer side is more than this many times the shorter get 422
    max_request_pixels: int = 2 * 4096 * 4096  # decoded pixels of all the images of one request, beyond: 413
    max_explains: int = 2  # explanations admitted at once (one computes, the others wait); beyond: 503
    unknown: bool = False  # answer "unknown" for inputs unlike the training data (the run's open_set.safetensors)
    unknown_rate: float | None = None  # the share of validation images answered unknown (None: as fitted)
    keep_unlabelled: int = 0  # images kept in the feedback database for labelling, a uniform sample of all the
    # classified ones (0: none)

    def __post_init__(self) -> None:
        numbers = {"max_batch": self.max_batch, "max_queue": self.max_queue, "max_body_mb": self.max_body_mb,
                   "max_pixels": self.max_pixels, "max_images": self.max_images, "deadline_ms": self.deadline_ms,
                   "top_k": self.top_k, "remember": self.remember, "remember_mb": self.remember_mb,
                   "feedback_per_minute": self.feedback_per_minute, "feedback_max_rows": self.feedback_max_rows,
                   "feedback_max_mb": self.feedback_max_mb,
                   "header_timeout_s": self.header_timeout_s, "body_timeout_s": self.body_timeout_s,
                   "max_connections": self.max_connections, "max_buffered_mb": self.max_buffered_mb,
                   "max_aspect": self.max_aspect, "max_request_pixels": self.max_request_pixels,
                   "max_explains": self.max_explains}
        bad = [name for name, value in numbers.items() if not value > 0] + (
            ["max_wait_ms"] if not self.max_wait_ms >= 0 else [])  # written so that NaN fails too
        if bad:
            raise ImgclfError(f"serving limits must be positive numbers (max_wait_ms may be 0): {', '.join(bad)}.")
        if not self.max_aspect >= 1:
            raise ImgclfError(f"max_aspect must be at least 1 (1: square images only), got {self.max_aspect}.")
        if self.runtime not in ("auto", "torch"):
            raise ImgclfError(f"runtime must be auto or torch, got {self.runtime!r}.")
        if self.invert not in ("none", "auto", "always"):
            raise ImgclfError(f"invert must be none, auto or always, got {self.invert!r}.")
        if not self.keep_unlabelled >= 0:
            raise ImgclfError(f"keep_unlabelled must be 0 (keep none) or more, got {self.keep_unlabelled}.")
        if self.keep_unlabelled and not self.feedback_db:
            raise ImgclfError("keeping images for labelling (--keep-unlabelled) stores them in the feedback database: "
                              "name one with --feedback-db PATH, or keep none (--keep-unlabelled 0).")
        if self.allowed_hosts is not None and not all(self.allowed_hosts):
            raise ImgclfError("allowed_hosts must be host names (a.example,b.example), none of them empty.")


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.retry_after = retry_after or (1 if status == 503 else None)  # seconds, for a Retry-After header


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 100, 100


def clip(value: object, limit: int = 100) -> str:
    """repr(value) in at most `limit` characters, cut with "...": what an error message may echo of user input."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Buckets:
    """A token bucket per client address: `per_minute` requests a minute, in bursts of up to as many. The
    `clients` seen most recently are remembered; one forgotten starts again with a full bucket."""

    def __init__(self, per_minute: float, clients: int = 10_000) -> None:
        self.per_minute, self.burst, self.clients = per_minute, max(1.0, per_minute), clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when), least recent first

    def take(self, client: str) -> float:
        """Take a token for `client`: 0 if there was one, else the seconds until there will be."""
        now = time.monotonic()
        tokens, then = self.buckets.pop(client, (self.burst, now))  # popped and put back: now the most recent
        tokens = min(self.burst, tokens + (now - then) * self.per_minute / 60)
        wait = 0.0 if tokens >= 1 else (1 - tokens) * 60 / self.per_minute
        self.buckets[client] = (tokens if wait else tokens - 1, now)
        if len(self.buckets) > self.clients:
            del self.buckets[next(iter(self.buckets))]
        return wait


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered (time.monotonic()), and the limit that set it (for the message)."""

    at: float
    ms: float

    @classmethod
    def of(cls, started: float, ms: float) -> Deadline:
        return cls(started + ms / 1000, ms)

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        """A 504 once the deadline has passed: a late request gets no more work."""
        if self.left() <= 0:
            raise self.missed()

    def missed(self) -> ApiError:
        return ApiError(504, f"no answer within {self.ms:g} ms; retry later.")


def open_image(data: bytes, config: ServeConfig, side: int) -> Image.Image:
    """Image bytes, checked from the header only: errors as ApiError (400 empty, 415 not an image or an
    unsupported format, 413 too many pixels, a decompression bomb, 422 too long and thin). A large JPEG is set to
    decode at a reduced size (Image.draft), no less than REDUCING_GAP x `side`, the model's longer side."""
    if not data:
        raise ApiError(400, "the image is empty; send the bytes of a PNG, JPEG, WebP, BMP or GIF file.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"the image is too large ({err}); send a smaller image.") from None
    except (OSError, ValueError, SyntaxError):
        raise ApiError(415, "the data is not an image; send a PNG, JPEG, WebP, BMP or GIF file.") from None
    if image.format not in FORMATS:
        raise ApiError(415, f"{image.format} images are not accepted; send PNG, JPEG, WebP, BMP or GIF.")
    if image.width * image.height > config.max_pixels:  # checked on the header, before any pixel is decoded
        raise ApiError(413, f"the image has {image.width}x{image.height} pixels, more than the "
                            f"{config.max_pixels:,} allowed; send a smaller image.")
    if max(image.size) > config.max_aspect * min(image.size):  # a 1 x 4,000,000 strip: tiny file, costly resize
        raise ApiError(422, f"the image is {image.width}x{image.height} pixels, one side more than "
                            f"{config.max_aspect:g} times the other; crop it to the part to classify.")
    if image.format in ("JPEG", "MPO") and min(image.size) >= 2 * REDUCING_GAP * side:
        image.draft(None, (REDUCING_GAP * side,) * 2)  # the decoder scales by 1/2, 1/4 or 1/8 as it goes
    return image


def pixels_of(image: Image.Image, side: int, deadline: Deadline) -> torch.Tensor:
    """The decoded image as uint8 (C, H, W), EXIF orientation applied, the first frame of an animation, a large
    one box-reduced to no less than REDUCING_GAP x `side` (so that the antialiased resize after it takes bounded
    time and memory); a damaged file is a 422, a request past its deadline a 504 before each costly step."""
    deadline.check()
    try:
        image.seek(0)
        image.load()
        deadline.check()
        return image_to_tensor(_reduced(image, side))
    except ApiError:
        raise
    except Exception as err:  # Pillow's decoders raise many types for damaged data; none may become a 500
        raise ApiError(422, f"the image is damaged or truncated ({err}); send the whole file.") from None
    finally:
        if image.width * image.height > TRIM:
            _trim()


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """`image` reduced by whole factors (box filter) to no less than REDUCING_GAP x `side` a side, first converted
    to the mode image_to_tensor takes (reduce would average a palette's indices); a smaller one as it is, so
    that it reads exactly as `imgclf predict` reads it."""
    target = REDUCING_GAP * side
    factors = (max(image.width // target, 1), max(image.height // target, 1))
    if factors == (1, 1):
        return image
    mode = (image.mode if image.mode in ("I", "F") else "I" if image.mode.startswith("I;16") else
            "L" if image.mode in GRAY_MODES else "RGB")
    return (image if image.mode == mode else image.convert(mode)).reduce(factors)  # info (EXIF) goes along


_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.name == "posix" else None  # glibc only


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps it in its per-thread arenas otherwise)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class _BodyLimit:
    """ASGI middleware: reads the whole body before the app sees it (then replays it): 413 above `limit` bytes,
    before any parsing; 408 when it has not all arrived `timeout` seconds after the headers; 503 while the bodies
    being received hold more than `budget` bytes together (slow uploads cannot pile up memory)."""

    def __init__(self, app, limit: int, timeout: float, budget: int) -> None:
        self.app, self.limit, self.timeout, self.budget = app, limit, timeout, budget
        self.buffered = 0  # bytes of the bodies being received, all requests together
        self.too_large = (f"the request body is larger than {limit / 2**20:.1f} MiB; send a smaller image or fewer "
                          "images.")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        try:
            body = await asyncio.wait_for(self._read(scope, receive, chunks), self.timeout)
        except ApiError as err:
            return await _error(send, err.status, err.message)
        except asyncio.TimeoutError:  # the partial body is dropped with the connection
            return await _error(send, 408, f"the request body did not arrive within {self.timeout:g} s; send it "
                                           "in one go.", close=True)
        finally:
            self.buffered -= sum(map(len, chunks))
        if body is None:
            return None  # the client went away: nothing to answer
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    async def _read(self, scope, receive, chunks: list[bytes]) -> bytes | None:
        """The whole body, received into `chunks`; None if the client disconnected first."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise ApiError(413, self.too_large)
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size, self.buffered = size + len(chunks[-1]), self.buffered + len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                raise ApiError(413, self.too_large)
            if self.buffered > self.budget:
                raise ApiError(503, "the server is receiving too many uploads at once; retry in a second.")
        return b"".join(chunks)


class _Observe:
    """ASGI middleware: counts and times every request by route and status (499 when the client hung up before
    an answer), and names the model version in an X-Model-Version header (plain ASGI: Starlette's
    BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, hung_up = time.perf_counter(), None, False
        scope.setdefault("state", {})["arrived"] = time.monotonic()  # request.state.arrived: deadlines count from here

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                if not any(name.lower() == b"x-model-version" for name, _ in headers):
                    message["headers"] = [*headers, (b"x-model-version", self.service.current.version.encode())]
            await send(message)

        async def receiving():
            nonlocal hung_up
            message = await receive()
            hung_up = hung_up or message["type"] == "http.disconnect"
            return message
        try:
            await self.app(scope, receiving, sending)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "other"  # no label per unknown URL
            # no answer: 499 (nginx's "client closed request") if the client hung up, else the 500 uvicorn sends
            self.service.requests.labels(path, str(status or (499 if hung_up else 500))).inc()
            self.service.latency.labels(path).observe(time.perf_counter() - started)


class _Guard:
    """ASGI middleware: 503 to a request beyond the connection cap (flagged by imgclf.serve.server), 400 to a Host
    header not in `hosts` (None: any; DNS rebinding), and security headers on every answer: the
    Content-Security-Policy of `policies` by path (API_POLICY by default), no MIME sniffing, framing or referrer."""

    def __init__(self, app, hosts: tuple[str, ...] | None, policies: dict[str, str]) -> None:
        self.app, self.policies = app, policies
        self.hosts = None if hosts is None else {host.strip("[]").lower() for host in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = self.policies.get(scope["path"], API_POLICY).encode()

        async def secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", policy),
                                      *_SECURITY_HEADERS]
            await send(message)
        if scope["state"].get("over_capacity"):
            return await _error(secured, 503, "the server has too many connections open; retry in a second.",
                                close=True)
        if self.hosts is not None and (host := _hostname(scope)) not in self.hosts:
            return await _error(secured, 400, f"the Host header {host[:100]!r} is not a name this server answers "
                                              "to; ask its operator to add it to --allowed-hosts.")
        return await self.app(scope, receive, secured)


_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"referrer-policy", b"no-referrer")]


def _hostname(scope) -> str:
    """The name in the Host header, lower-case, without the port or an IPv6 address's brackets ("" if none)."""
    host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode("latin-1").lower()
    return host[1:host.find("]")] if host.startswith("[") else host.partition(":")[0]


async def _error(send, status: int, message: str, close: bool = False) -> None:
    """A JSON error answered by a middleware, before the app; `close`: close the connection after it (without, the
    server reads and drops the rest of the body, so that the client sees the answer)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *([(b"connection", b"close")] if close else []), *([(b"retry-after", b"1")] if status == 503 else [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, eq=False)
class Loaded:
    """One loaded model with everything that must change with it; a request keeps the one it started with."""

    model: object
    meta: dict
    preprocess: Preprocess
    name: str
    onnx: ExportedModel | None = None  # the run's own ONNX export, which computes predictions when present
    open_set: OpenSet | None = None  # unknown-input detection (serve --unknown)
    threshold: float | None = None  # open_set's score above which the answer is unknown

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.onnx or isinstance(self.model, ExportedModel) else "torch"

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def version(self) -> str:
        return self.meta["sha256"][:12]

    def label_of(self, probs: list[float]) -> str:
        """The class with the highest probability."""
        return self.classes[max(range(len(probs)), key=probs.__getitem__)]

    @property
    def side(self) -> int:
        """The longer side of the model's input, in pixels."""
        return max(self.preprocess.size)

    @cached_property
    def explained(self) -> torch.nn.Module:
        """A private copy of the PyTorch model, made on the first explanation: Captum hooks the model it works
        on, while predictions go on with the original in the inference thread."""
        return copy.deepcopy(self.model)


class Answer(NamedTuple):
    """What the batcher gives back for one image: class probabilities, and the unknown-input score (None
    without --unknown)."""

    probs: list[float]
    unknown_score: float | None


@dataclass
class Job:
    """One image for the batcher: its model input, the model it started under, and what to remember of it under
    `prediction_id` (None: nothing)."""

    x: torch.Tensor  # uint8, the model's size and channels
    loaded: Loaded
    image: bytes
    inverted: bool
    prediction_id: str | None


class Service:
    """The loaded model, its batcher, the feedback store and the metrics of one app."""

    def __init__(self, model_path: str | Path, config: ServeConfig) -> None:
        self.config = config
        self.current = self.load(model_path)
        self.scratch = None if config.recent_db else tempfile.mkdtemp(prefix="imgclf-serve-")
        self.recent = Recent(config.recent_db or Path(self.scratch) / "recent.db", config.remember,
                             int(config.remember_mb * 2**20))
        self.ready = False
        self.reloading = asyncio.Lock()
        self.registry = CollectorRegistry()
        shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # worker processes of one server
        if shared:  # /metrics adds up the numbers every worker keeps in that folder
            MultiProcessCollector(self.registry)
        registry = None if shared else self.registry
        self.requests = Counter("imgclf_requests", "HTTP requests", ["path", "status"], registry=registry)
        self.latency = Histogram("imgclf_request_seconds", "request latency", ["path"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.batch_sizes = Histogram("imgclf_batch_size", "images per forward pass", registry=registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("imgclf_queue_depth", "images waiting for a forward pass", registry=registry,
                                 multiprocess_mode="livesum")
        self.feedback_count = Counter("imgclf_feedback", "feedback rows stored", registry=registry)
        self.batcher = Batcher(self._infer, config.max_batch, config.max_wait_ms, config.max_queue,
                               on_batch=self.batch_sizes.observe)
        self.store = FeedbackStore(config.feedback_db, max_rows=config.feedback_max_rows,
                                   max_bytes=int(config.feedback_max_mb * 2**20)) if config.feedback_db else None
        self.feedback_buckets = _Buckets(config.feedback_per_minute)
        self.decoders = ThreadPoolExecutor(DECODERS, thread_name_prefix="imgclf-decode")
        self.explainer = ThreadPoolExecutor(1, thread_name_prefix="imgclf-explain")  # off the inference thread
        self.explaining = asyncio.Semaphore(config.max_explains)
        # the kept sample is written in a thread of its own: answers do not wait for its synced commits
        self.keeper = ThreadPoolExecutor(1, thread_name_prefix="imgclf-keep") if config.keep_unlabelled else None
        self.keep_backlog = threading.BoundedSemaphore(KEEP_BACKLOG)

    def load(self, path: str | Path) -> Loaded:
        """A model, its metadata and preprocessing, warmed up by one inference; a run directory's predictions are
        computed by its ONNX export when it has a current one (and the runtime is auto)."""
        model, meta = open_model(path)
        fitted = openset.required(path, model, meta, self.config.unknown_rate) if self.config.unknown else None
        twin = self.config.runtime == "auto" and Path(path).is_dir() and not (fitted and fitted.needs_features)
        onnx = onnx_twin(Path(path), meta) if twin else None
        loaded = Loaded(model.eval(), meta, preprocess_of(meta),
                        meta["architecture"]["name"] if "architecture" in meta else Path(path).name, onnx,
                        fitted, fitted.threshold() if fitted else None)
        self._answers(loaded, torch.zeros(1, loaded.preprocess.channels, *loaded.preprocess.size))  # warm-up
        return loaded

    async def reload(self, body: dict) -> dict:
        """Swap in another run of the models folder once it has loaded and warmed up; on any failure the
        current model keeps serving. Requests already under way finish with the model they started with."""
        folder = Path(self.config.models_dir).resolve()
        name = body.get("run")
        try:
            target = (folder / name).resolve() if isinstance(name, str) and "://" not in name else None
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system
            target = None
        if target is None or not target.is_relative_to(folder) or target == folder:
            raise ApiError(422, f'send {{"run": "<a run directory or model file inside {folder}>"}}; URLs and '
                                "paths outside that folder are refused.")
        async with self.reloading:
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self.load, target)
            except Exception as err:  # a damaged or foreign file: say why, keep the current model
                raise ApiError(422, f"cannot load {clip(name)} ({first_line(err)}); still serving "
                                    f"{self.current.name} {self.current.version}.") from None
            self.current = loaded
        log.info("reloaded: now serving %s (version %s)", loaded.name, loaded.version)
        return {"name": loaded.name, "version": loaded.version, "run": str(target)}

    @staticmethod
    def authorized(authorization: str | None, token: str, action: str, kind: str) -> None:
        """401 unless `authorization` is "Bearer <token>"; `action` and `kind` name what needs which token."""
        if not authorization or not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, f"{action} needs the header Authorization: Bearer <the server's {kind} token>.")

    def admit_feedback(self, client: str) -> None:
        """429 once `client` has sent more feedback than its share (--feedback-per-minute)."""
        wait = self.feedback_buckets.take(client)
        if wait:
            raise ApiError(429, f"too much feedback from your address: at most {self.config.feedback_per_minute:g} "
                                "a minute; retry later.", retry_after=math.ceil(wait))

    def _infer(self, jobs: list[Job]) -> list[Answer]:
        """A batch of jobs -> each one's answer; inputs that started under different models (a reload in between)
        go through their own model. The predictions to remember are stored before any is answered, so a
        prediction id is known to every worker once its answer is out."""
        results: list[Answer] = []
        for loaded, group in itertools.groupby(jobs, key=lambda job: job.loaded):
            x = loaded.preprocess.normalize(torch.stack([job.x for job in group]).float() / 255)  # = preprocess
            results += self._answers(loaded, x)
        kept = [(job.prediction_id, Remembered(job.image, job.loaded.label_of(answer.probs), job.loaded.version,
                                               job.inverted))
                for job, answer in zip(jobs, results, strict=True) if job.prediction_id]
        if kept:
            self.recent.add(kept)
        if self.keeper and kept:
            self._offer([(job, answer) for job, answer in zip(jobs, results, strict=True) if job.prediction_id])
        return results

    @staticmethod
    def _answers(loaded: Loaded, x: torch.Tensor) -> list[Answer]:
        """The answers of `loaded` to a model-ready batch (B, C, H, W)."""
        fitted = loaded.open_set
        with torch.inference_mode():
            if fitted and fitted.needs_features:
                features, logits = openset.forward(loaded.model, x)
            else:
                features, logits = None, (loaded.onnx or loaded.model)(x).float()
            probs = torch.softmax(logits / loaded.meta.get("temperature", 1.0), dim=1).tolist()
            scores = fitted.scores(logits, features)[fitted.method].tolist() if fitted else [None] * len(probs)
        return [Answer(p, s) for p, s in zip(probs, scores, strict=True)]
    def _offer(self, scored: list[tuple[Job, Answer]]) -> None:
        """Hand classified images to the keeper thread, which offers them to the kept sample; dropped when
        KEEP_BACKLOG batches are already waiting (the database is slower than the traffic)."""
        if not self.keep_backlog.acquire(blocking=False):
            log.warning("%d images not offered to the kept sample: its writes are behind", len(scored))
            return
        gaps = margins(torch.tensor([answer.probs for _, answer in scored])).tolist()
        entries = [Kept(job.prediction_id, job.image, job.loaded.label_of(probs), max(probs), gap, score,
                        job.loaded.version, job.inverted)
                   for (job, (probs, score)), gap in zip(scored, gaps, strict=True)]
        self.keeper.submit(self._keep, entries)

    def _keep(self, entries: list[Kept]) -> None:
        """Offer images to the kept sample (in the keeper thread); a database failure is logged, never answered."""
        try:
            self.store.keep(entries, self.config.keep_unlabelled)
        except StoreError as err:
            log.error("%s", err)
        finally:
            self.keep_backlog.release()

    def _remembered(self, prediction_id: str) -> Remembered | None:
        """What a prediction id refers to: a recent prediction, else an image of the kept sample (kept longer)."""
        entry = self.recent.get(prediction_id)
        kept = None if entry is not None else self.store.kept(prediction_id)
        return entry if kept is None else Remembered(kept.image, kept.predicted, kept.model_version, kept.inverted)

    def queue_reader(self, authorization: str | None) -> FeedbackStore:
        """The store whose kept images the labelling queue shows: 404 when this server keeps none, 401 without
        the feedback token when the server has one (the queue shows users' images)."""
        if self.store is None or not self.config.keep_unlabelled:
            raise ApiError(404, "this server keeps no images for labelling; start it with --keep-unlabelled N.")
        if self.config.feedback_token:
            self.authorized(authorization, self.config.feedback_token, "the labelling queue", "feedback")
        return self.store

    async def prepare(self, data: bytes, loaded: Loaded, deadline: Deadline) -> tuple[torch.Tensor, bool]:
        """Image bytes -> the uint8 (C, H, W) image at the model's size and channels (normalized with the rest of
        its batch), and whether the image was inverted; only small images are read on the event loop, others in
        the decoding pool."""
        if len(data) > INLINE_BYTES:
            return await self.decoding(deadline, self._prepare, data, loaded, deadline)
        image = open_image(data, self.config, loaded.side)
        if image.width * image.height > INLINE:
            return await self.decoding(deadline, self._prepare, image, loaded, deadline)
        return self._prepare(image, loaded, deadline)

    def _prepare(self, image: bytes | Image.Image, loaded: Loaded, deadline: Deadline) -> tuple[torch.Tensor, bool]:
        if isinstance(image, bytes):
            image = open_image(image, self.config, loaded.side)
        pixels = pixels_of(image, loaded.side, deadline)
        invert = self._inverts(pixels)
        return loaded.preprocess.prepare(255 - pixels if invert else pixels), invert

    async def decoding(self, deadline: Deadline, work: Callable[..., T], *args: object) -> T:
        """work(*args) in the decoding pool; a 504 when `deadline` passes first (work not yet started is dropped)."""
        future = asyncio.get_running_loop().run_in_executor(self.decoders, work, *args)
        try:
            return await asyncio.wait_for(future, max(deadline.left(), 0.001))
        except TimeoutError:
            raise deadline.missed() from None

    def check(self, images: list[bytes], loaded: Loaded) -> None:
        """Every image of a request checked from its header (see open_image), and their decoded pixels together
        within max_request_pixels (413)."""
        total = sum(image.width * image.height for image in (open_image(data, self.config, loaded.side)
                                                              for data in images))
        if total > self.config.max_request_pixels:
            raise ApiError(413, f"the {len(images)} images have {total:,} pixels in all, more than the "
                                f"{self.config.max_request_pixels:,} allowed in one request; send fewer or smaller "
                                "images.")

    def _inverts(self, pixels: torch.Tensor) -> bool:
        """Whether --invert applies to this uint8 (C, H, W) image."""
        return self.config.invert == "always" or (self.config.invert == "auto" and _light_background(pixels))

    async def classify(self, data: bytes, loaded: Loaded, started: float,
                       prediction_id: str | None = None) -> tuple[Answer, bool]:
        """One image's answer under `loaded`, through the batcher, and whether it was inverted;
        `started` (time.monotonic()) is when the request arrived: the deadline counts from there. With a
        `prediction_id` the image and answer are remembered under it."""
        deadline = Deadline.of(started, self.config.deadline_ms)
        try:
            with self.batcher.expecting():
                x, inverted = await self.prepare(data, loaded, deadline)
                deadline.check()
                answer = self.batcher.submit(Job(x, loaded, data, inverted, prediction_id))
            return await asyncio.wait_for(answer, deadline.left()), inverted
        except Overloaded:
            raise ApiError(503, "the server is busy; retry in a second.") from None
        except TimeoutError:
            raise deadline.missed() from None

    async def predict(self, data: bytes, started: float) -> dict:
        """One image's answer; `started` (time.monotonic()) is when the request arrived."""
        loaded, prediction_id = self.current, uuid.uuid4().hex
        (probs, score), _ = await self.classify(data, loaded, started, prediction_id)
        best = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:self.config.top_k]
        top = [{"label": loaded.classes[i], "probability": probs[i]} for i in best]
        unknown = {} if score is None else {"unknown": score > loaded.threshold, "unknown_score": score,
                                            "unknown_threshold": loaded.threshold}
        return {"prediction_id": prediction_id, "label": "unknown" if unknown.get("unknown") else top[0]["label"],
                **unknown, "top": top, "model": {"name": loaded.name, "version": loaded.version},
                "timing_ms": round((time.monotonic() - started) * 1000, 3)}

    async def explain(self, data: bytes, method: str, target: str | None, started: float) -> tuple[bytes, str]:
        """An attribution overlay (PNG) for the predicted class or `target`, and the class it explains, computed
        in a thread of its own on a copy of the model, max_explains at a time (then 503): predictions go on
        meanwhile. Captum needs the PyTorch model's gradients (a run directory, not an export)."""
        loaded = self.current
        if not isinstance(loaded.model, torch.nn.Module):
            raise ApiError(422, "explanations need the PyTorch model: serve the run directory, not an export.")
        if target is not None and target not in loaded.classes:
            raise ApiError(422, f"target {clip(target)} is not one of the model's classes.")
        if self.explaining.locked():
            raise ApiError(503, f"the server is already explaining {self.config.max_explains} images; retry in a "
                                "second.")
        deadline = Deadline.of(started, self.config.deadline_ms)

        def work() -> tuple[bytes, str]:
            from imgclf.evaluate.plots import overlay  # imported here: the first import takes seconds (matplotlib)
            from imgclf.explain import METHODS, attribute

            if method not in METHODS:
                raise ApiError(422, f"unknown method {clip(method)}; choose from {', '.join(METHODS)}.")
            pixels = pixels_of(open_image(data, self.config, loaded.side), loaded.side, deadline)
            x = loaded.preprocess((255 - pixels if self._inverts(pixels) else pixels).unsqueeze(0))
            model = loaded.explained
            with torch.no_grad():
                chosen = loaded.classes.index(target) if target else int(model(x).argmax())
            heat = attribute(model, x, torch.tensor([chosen]), method,
                             baseline=loaded.preprocess.normalize(torch.zeros_like(x)))[0]
            shown = loaded.preprocess.prepare(pixels.unsqueeze(0))[0]
            return overlay(shown.numpy(), heat.numpy(), f"{method}: {loaded.classes[chosen]}"), loaded.classes[chosen]
        async with self.explaining:
            try:
                return await asyncio.get_running_loop().run_in_executor(self.explainer, work)
            except ImgclfError as err:  # Captum missing
                raise ApiError(503, str(err)) from None

    async def feedback(self, body: dict) -> tuple[dict, int]:
        """Store one correction (in a worker thread, committed before returning); returns it and the status."""
        if self.store is None:
            raise ApiError(503, "feedback is disabled on this server (start it with --feedback-db PATH).")
        label, prediction_id, key = (body.get(k) for k in ("label", "prediction_id", "idempotency_key"))
        for field, value in (("prediction_id", prediction_id), ("idempotency_key", key)):
            if value is not None and (not isinstance(value, str) or len(value) > 200):
                raise ApiError(422, f"{field} must be a string of at most 200 characters.")
        loaded = self.current
        if not isinstance(label, str) or label not in loaded.classes:
            raise ApiError(422, f"label {clip(label)} is not one of the model's classes ({', '.join(loaded.classes)}).")
        if prediction_id is not None:
            try:
                entry = await asyncio.to_thread(self._remembered, prediction_id)
            except StoreError as err:
                log.error("%s", err)
                raise ApiError(503, "the feedback store is unavailable; retry in a second.") from None
            if entry is None:
                raise ApiError(422, f"unknown prediction_id {clip(prediction_id)} (this server keeps the last "
                                    f"{self.config.remember:,} and the images kept for labelling); send the image "
                                    "itself instead.")
        elif body.get("image") is not None:  # scored by the served model now, so stats know what it said
            image = await _base64_off_loop(body["image"])
            answer, inverted = await self.classify(image, loaded, time.monotonic())  # only images are stored
            entry = Remembered(image, loaded.label_of(answer.probs), loaded.version, inverted)
        else:
            raise ApiError(422, "feedback needs a prediction_id or the image (base64), and the label.")
        try:
            row, stored = await asyncio.to_thread(
                self.store.add, label, entry.image, predicted=entry.predicted, prediction_id=prediction_id,
                model_version=entry.version, inverted=entry.inverted, idempotency_key=key)
        except StoreFull as err:
            raise ApiError(507, f"{err} The operator must export it (imgclf feedback export) and start a new one, or "
                                "raise --feedback-max-rows / --feedback-max-mb.") from None
        except StoreError as err:
            log.error("%s", err)
            raise ApiError(503, "the feedback store is unavailable; retry in a second.") from None
        if stored.label != label and stored.clash == "idempotency_key":
            raise ApiError(409, f"idempotency_key {clip(key)} was already used for the label {stored.label!r}; use "
                                "a new key for a new correction.")
        if stored.label != label:
            raise ApiError(409, f"prediction {clip(prediction_id)} was already corrected to {stored.label!r}; each "
                                "prediction takes one correction.")
        if stored.new:
            self.feedback_count.inc()
        return ({"feedback_id": row, "label": label, "predicted": entry.predicted, "stored": stored.new},
                201 if stored.new else 200)


def page_of(preprocess: Preprocess) -> str:
    """Which page suits the model: "draw" (a drawing pad, upload as a second tab) for small single-channel
    inputs, "upload" (upload, drop or paste a photo) for any other."""
    return "draw" if preprocess.channels == 1 and max(preprocess.size) <= DRAWABLE else "upload"


def _page_policy(html: str) -> str:
    """The page's Content-Security-Policy: nothing from other origins, and only its own inline script and style
    (allowed by their sha256), so injected markup cannot run."""
    def hashes(tag: str) -> str:
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"
                        for text in re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, re.DOTALL))
    return (f"default-src 'self'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _light_background(image: torch.Tensor) -> bool:
    """Whether the border of a uint8 (C, H, W) image is mostly light (a dark digit on paper)."""
    border = torch.cat([image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], dim=-1)
    return float(border.float().mean()) > 127


async def _base64_off_loop(text: object) -> bytes:
    """_base64, in a worker thread for more than INLINE_BYTES of text."""
    if isinstance(text, str) and len(text) > INLINE_BYTES:
        return await asyncio.to_thread(_base64, text)
    return _base64(text)


def _base64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, "image must be a base64 string.")
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image is not valid base64.") from None


async def _images(request: Request, many: bool) -> list[bytes]:
    """The image bytes of a request: the body itself (Content-Type image/...; one image), multipart fields (file, or
    files for a batch) or JSON base64."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("image/") and not many:
        return [await request.body()]
    if kind.startswith("multipart/form-data"):
        async with request.form() as form:
            uploads = form.getlist("files" if many else "file") or form.getlist("file" if many else "files")
            if not uploads or any(isinstance(upload, str) for upload in uploads):
                raise ApiError(422, f"send the image as the multipart field {'files' if many else 'file'!r}.")
            return [await upload.read() for upload in uploads]
    if kind.startswith("application/json"):
        body = await _json(request)
        values = body.get("images") if many else [body.get("image")]
        if not isinstance(values, list) or not values or any(v is None for v in values):
            raise ApiError(422, 'send {"images": [base64, ...]}.' if many else 'send {"image": base64}.')
        return [await _base64_off_loop(v) for v in values]
    raise ApiError(415, "send multipart/form-data (image files) or application/json (base64)." if many else
                   "send the image as the body (Content-Type: image/png, image/jpeg, ...), as multipart/form-data "
                   "or as application/json (base64).")


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise ApiError(400, "the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object.")
    return body


_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
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


WORKER_SETTINGS = "IMGCLF_SERVE_WORKER"  # how `imgclf serve --workers N` hands the model and settings to each worker


def worker_app() -> FastAPI:
    """The app of one worker process of `imgclf serve --workers N` (uvicorn's app factory)."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    torch.set_num_threads(settings["threads"])
    return create_app(settings["model"], ServeConfig(**settings["config"]))


def create_app(model_path: str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The service for a run directory or an exported model file; the model loads and warms up at startup."""
    config = config or ServeConfig()
    service = Service(model_path, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()  # the model was warmed up when it loaded
        gc.freeze()  # the ~250,000 objects of torch and the app are never collected: a full collection of them
        # took 130-250 ms here, a pause that every request in flight would wait out
        service.ready = True
        log.info("serving %s (version %s)", service.current.name, service.current.version)
        yield
        service.ready = False
        await service.batcher.stop()  # what was accepted is answered before the process exits
        if service.keeper:
            service.keeper.shutdown(wait=True)  # the images offered so far are written before the store closes
        service.decoders.shutdown()
        service.explainer.shutdown()
        if service.store:
            service.store.close()
        if service.scratch:
            shutil.rmtree(service.scratch, ignore_errors=True)

    app = FastAPI(title="imgclf", version="1", lifespan=lifespan,
                  description=f"Image classification with {service.current.name}.",
                  docs_url="/docs" if config.docs else None, redoc_url="/redoc" if config.docs else None)
    app.state.service = service
    page_html = (Path(__file__).parent / "static" / "index.html").read_text()
    queue_html = (Path(__file__).parent / "static" / "queue.html").read_text()
    policies = {"/": _page_policy(page_html), "/queue": _page_policy(queue_html)} | (
        dict.fromkeys(["/docs", "/docs/oauth2-redirect", "/redoc"], DOCS_POLICY) if config.docs else {})

    app.add_middleware(_BodyLimit, limit=int(config.max_body_mb * 2**20), timeout=config.body_timeout_s,
                       budget=int(config.max_buffered_mb * 2**20))
    app.add_middleware(_Guard, hosts=config.allowed_hosts, policies=policies)  # before any body is read
    app.add_middleware(_Observe, service=service)  # added last: the outermost, it sees every answer

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)

    @app.exception_handler(HTTPException)  # the framework's own: an unknown path, a wrong method
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        path, allowed = clip(request.url.path), (err.headers or {}).get("Allow")
        message = (f"there is nothing at {path}; check the URL (the API is under /v1/)." if err.status_code == 404
                   else f"{clip(request.method)} is not allowed on {path}; use {allowed}." if allowed
                   else str(err.detail))
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{clip('.'.join(map(str, e['loc'])))}: {e['msg']}" for e in err.errors()[:3])
        return JSONResponse({"error": f"the request is not valid: {problems}."}, status_code=422)

    @app.post("/v1/predict", openapi_extra=_IMAGE_BODY, summary="classify one image")
    async def predict(request: Request) -> JSONResponse:
        result = await service.predict((await _images(request, many=False))[0], request.state.arrived)
        return JSONResponse(result, headers={"X-Model-Version": result["model"]["version"]})  # the one that answered

    @app.post("/v1/predict/batch", openapi_extra=_BATCH_BODY, summary="classify several images")
    async def predict_batch(request: Request) -> dict:
        images = await _images(request, many=True)
        if len(images) > config.max_images:
            raise ApiError(413, f"{len(images)} images in one request, more than the {config.max_images} allowed.")
        await service.decoding(Deadline.of(request.state.arrived, config.deadline_ms), service.check, images,
                               service.current)  # every image checked before any is queued
        return {"predictions": await asyncio.gather(*(service.predict(data, request.state.arrived)
                                                      for data in images))}

    @app.post("/v1/feedback", openapi_extra=_FEEDBACK_BODY, status_code=201, summary="correct a prediction")
    async def feedback(request: Request) -> Response:
        service.admit_feedback(request.client.host if request.client else "unknown")
        if config.feedback_token:  # before reading the body
            service.authorized(request.headers.get("authorization"), config.feedback_token, "feedback", "feedback")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "feedback must be sent as Content-Type: application/json (forms and text/plain "
                                "are refused: any web page could send those).")
        result, status = await service.feedback(await _json(request))
        return JSONResponse(result, status_code=status)

    if config.admin_token:
        @app.post("/admin/reload", summary="swap in another run of the models folder (needs the admin token)")
        async def reload(request: Request) -> dict:
            # the token is checked before anything else is read
            service.authorized(request.headers.get("authorization"), config.admin_token, "reload", "admin")
            return await service.reload(await _json(request))

    @app.post("/v1/explain", openapi_extra=_IMAGE_BODY, summary="Grad-CAM of one image as a PNG overlay")
    async def explain(request: Request, method: str = "gradcam", target: str | None = None) -> Response:
        data = (await _images(request, many=False))[0]
        png, label = await service.explain(data, method, target, request.state.arrived)
        return Response(png, media_type="image/png", headers={"X-Explained-Class": label})

    @app.get("/v1/model", summary="classes, input and version of the model")
    async def model() -> dict:
        loaded = service.current
        return {"name": loaded.name, "version": loaded.version, "classes": loaded.classes,
                "input": loaded.preprocess.to_dict(), "temperature": loaded.meta.get("temperature", 1.0),
                "metrics": loaded.meta.get("metrics", {}), "invert": config.invert,
                "page": page_of(loaded.preprocess), "runtime": loaded.runtime,
                "feedback": "off" if service.store is None else "token" if config.feedback_token else "open",
                "unknown": loaded.open_set.describe() if loaded.open_set else None,
                "keep_unlabelled": config.keep_unlabelled}

    @app.get("/v1/queue", summary="the kept images whose label would help most, first (--keep-unlabelled)")
    async def labelling_queue(request: Request, by: str = "margin", limit: int = 20) -> dict:
        store = service.queue_reader(request.headers.get("authorization"))
        if by not in QUEUE_ORDERS or not 1 <= limit <= QUEUE_LIMIT:
            raise ApiError(422, f"send by={' or by='.join(QUEUE_ORDERS)} and a limit from 1 to {QUEUE_LIMIT}.")
        try:
            queued = await asyncio.to_thread(store.queue, by, limit)
        except StoreError as err:
            log.error("%s", err)
            raise ApiError(503, "the feedback store is unavailable; retry in a second.") from None
        return {"by": by, "queue": [asdict(item) for item in queued]}

    @app.get("/v1/queue/{prediction_id}/image", summary="a kept image, as it was sent")
    async def queued_image(request: Request, prediction_id: str) -> Response:
        store = service.queue_reader(request.headers.get("authorization"))
        try:
            kept = await asyncio.to_thread(store.kept, prediction_id)
        except StoreError as err:
            log.error("%s", err)
            raise ApiError(503, "the feedback store is unavailable; retry in a second.") from None
        if kept is None:
            raise ApiError(404, f"no kept image has the prediction_id {clip(prediction_id)}.")
        with Image.open(io.BytesIO(kept.image)) as image:  # accepted when it was classified: one of FORMATS
            return Response(kept.image, media_type=MEDIA_TYPES[image.format])

    @app.get("/queue", include_in_schema=False)
    async def queue_page() -> HTMLResponse:
        return HTMLResponse(queue_html)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

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
