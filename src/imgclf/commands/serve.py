"""imgclf serve: an HTTP service for a model."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path

from imgclf.commands.common import Parents, positive, unknown_options
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf serve RUN."""
    serve = commands.add_parser("serve", parents=[parents.logs], help="an HTTP service for a model, with feedback")
    serve.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-batch", type=positive, default=64, help="largest forward pass (default 64)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0,
                       help="how long a request waits to share a batch (default 2; 0 with --max-batch 1: no batching)")
    serve.add_argument("--max-queue", type=positive, default=512, help="queued images before 503 (default 512)")
    serve.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body (default 4 MiB)")
    serve.add_argument("--max-pixels", type=positive, default=4096 * 4096, help="largest image (default 4096x4096)")
    serve.add_argument("--deadline-ms", type=float, default=5000, help="per-request deadline (default 5000)")
    serve.add_argument("--invert", choices=["none", "auto", "always"], default="none",
                       help="auto: invert dark-on-light images (photos of digits) for MNIST-style models")
    serve.add_argument("--feedback-db", default="feedback.db",
                       help="SQLite file or PostgreSQL URL for feedback (default feedback.db; "
                            "postgresql://USER@HOST/DB for several replicas)")
    serve.add_argument("--threads", type=positive, default=1,
                       help="torch threads for the forward pass (default 1: the event loop needs a core too)")
    serve.add_argument("--admin", action="store_true",
                       help="enable POST /admin/reload, with the token in $IMGCLF_ADMIN_TOKEN")
    serve.add_argument("--models-dir", type=Path,
                       help="the folder reload may take runs from (default: the folder holding RUN)")
    serve.add_argument("--workers", type=positive, default=1,
                       help="server processes sharing the port, the feedback store and the prediction ids "
                            "(default 1; one per core is fastest, see the README)")
    serve.add_argument("--feedback-per-minute", type=float, default=60.0,
                       help="feedback posts per client address a minute (default 60; 429 beyond). With "
                            "$IMGCLF_FEEDBACK_TOKEN set, feedback needs Authorization: Bearer <that token>")
    serve.add_argument("--feedback-max-rows", type=positive, default=100_000,
                       help="corrections the feedback store may hold (default 100,000; 507 beyond)")
    serve.add_argument("--feedback-max-mb", type=float, default=1024.0,
                       help="MiB of images the feedback store may hold (default 1024)")
    serve.add_argument("--keep-unlabelled", type=int, default=0, metavar="N",
                       help="keep a uniform sample of up to N of the classified images in the feedback database, "
                            "for labelling (imgclf feedback queue, the /queue page); default 0: keep none. It stores "
                            "users' images: see the README's privacy note")
    serve.add_argument("--header-timeout-s", type=float, default=10.0,
                       help="close a connection whose request headers are not complete by then (default 10)")
    serve.add_argument("--body-timeout-s", type=float, default=30.0,
                       help="a request body not complete by then gets 408 (default 30)")
    serve.add_argument("--max-connections", type=positive, default=1000,
                       help="requests arriving while more connections are open get 503 (default 1000)")
    serve.add_argument("--max-buffered-mb", type=float, default=64.0,
                       help="request bodies being received, all together; beyond, new ones get 503 (default 64 MiB)")
    serve.add_argument("--docs", action="store_true",
                       help="serve /docs and /redoc (they load Swagger UI and ReDoc from a CDN; default off)")
    serve.add_argument("--allowed-hosts", metavar="NAMES",
                       help="Host header names answered, comma-separated (others get 400); '*': any (default: "
                            "localhost, 127.0.0.1, ::1 when --host is a loopback address, else any)")
    serve.add_argument("--max-aspect", type=float, default=32.0,
                       help="longest side / shortest side of an image, beyond: 422 (default 32)")
    serve.add_argument("--max-request-pixels", type=positive, default=2 * 4096 * 4096,
                       help="decoded pixels of all the images of one request, beyond: 413 (default 2x 4096x4096)")
    serve.add_argument("--max-explains", type=positive, default=2,
                       help="explanations admitted at once (one computes, the others wait), beyond: 503 (default 2)")
    serve.add_argument("--runtime", choices=["auto", "torch"], default="auto",
                       help="auto (default): a run's current ONNX export (imgclf export RUN) computes the predictions "
                            "with onnxruntime, several times faster on a CPU; torch: always PyTorch")
    unknown_options(serve)
    serve.set_defaults(run=_serve)


def _allowed_hosts(args: argparse.Namespace) -> tuple[str, ...] | None:
    """--allowed-hosts as names, None for any; by default only loopback names on a loopback address: a web page
    cannot then reach the service through a DNS name rebound to 127.0.0.1."""
    if args.allowed_hosts is not None:
        return None if args.allowed_hosts.strip() == "*" else tuple(h.strip() for h in args.allowed_hosts.split(","))
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a name, not an address
        loopback = args.host == "localhost"
    return ("localhost", "127.0.0.1", "::1") if loopback else None


def _serve(args: argparse.Namespace) -> None:
    try:
        import torch
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        from imgclf.serve.app import WORKER_SETTINGS, ServeConfig, create_app
        from imgclf.serve.server import server_config
    except ImportError as err:
        raise ImgclfError(f"serving needs the serve extra ({err.name} is missing): "
                          "pip install 'imgclf[serve]'.") from err
    token = os.environ.get("IMGCLF_ADMIN_TOKEN") if args.admin else None
    if args.admin and not token:
        raise ImgclfError("--admin needs a token in the environment: export IMGCLF_ADMIN_TOKEN=<a long secret>.")
    if args.admin and args.workers > 1:
        raise ImgclfError("--admin reloads the model of one worker only: use it with --workers 1 (or restart the "
                          "server to change the model of every worker).")
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, deadline_ms=args.deadline_ms,
                         invert=args.invert, feedback_db=args.feedback_db, admin_token=token,
                         models_dir=str(args.models_dir or args.run_dir.resolve().parent),
                         feedback_token=os.environ.get("IMGCLF_FEEDBACK_TOKEN") or None,
                         feedback_per_minute=args.feedback_per_minute, feedback_max_rows=args.feedback_max_rows,
                         feedback_max_mb=args.feedback_max_mb, header_timeout_s=args.header_timeout_s,
                         body_timeout_s=args.body_timeout_s, max_connections=args.max_connections,
                         max_buffered_mb=args.max_buffered_mb, docs=args.docs, allowed_hosts=_allowed_hosts(args),
                         max_aspect=args.max_aspect, max_request_pixels=args.max_request_pixels,
                         max_explains=args.max_explains, runtime=args.runtime, unknown=args.unknown,
                         unknown_rate=args.unknown_rate, keep_unlabelled=args.keep_unlabelled)
    options = {"log_level": "debug" if args.verbose else "warning", "timeout_graceful_shutdown": 30}
    if args.workers == 1:
        torch.set_num_threads(args.threads)  # before the model loads: onnxruntime takes as many
        app = create_app(args.run_dir, config)
        _started(args)
        # SIGTERM: uvicorn stops accepting, finishes in-flight requests and runs the app's shutdown, then re-raises
        # the signal to the handler it found; a no-op one lets the command end with status 0 (a normal stop)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        uvicorn.Server(server_config(app, config, args.host, args.port, **options)).run()
        return
    # several processes on one socket (uvicorn's supervisor, as uvicorn.run starts it; SIGTERM stops them all
    # gracefully), each loading the model; they share the remembered predictions and the metrics through files
    # in a scratch folder
    scratch = Path(tempfile.mkdtemp(prefix="imgclf-serve-"))
    try:
        (scratch / "metrics").mkdir()
        config.recent_db = str(scratch / "recent.db")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
        os.environ[WORKER_SETTINGS] = json.dumps({"model": str(args.run_dir.resolve()), "config": asdict(config),
                                                  "threads": args.threads})
        # a worker busy loading torch and the model on a loaded machine can miss uvicorn's 5 s health check and be
        # killed and restarted over and over: give it a minute
        settings = server_config("imgclf.serve.app:worker_app", config, args.host, args.port, factory=True,
                                 workers=args.workers, timeout_worker_healthcheck=60, **options)
        _started(args)
        Multiprocess(settings, sockets=[settings.bind_socket()]).run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _started(args: argparse.Namespace) -> None:
    print(f"serving {args.run_dir} on http://{args.host}:{args.port} with {args.workers} worker process"
          f"{'es' if args.workers > 1 else ''} (API described at {'/docs' if args.docs else '/openapi.json'}; "
          "Ctrl-C or SIGTERM stops after the requests in flight)", flush=True)
