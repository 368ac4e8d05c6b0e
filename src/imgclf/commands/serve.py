"""imgclf serve: an HTTP service for a model."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from imgclf.commands.common import Parents, positive
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
    serve.add_argument("--max-aspect", type=float, default=32.0,
                       help="longest side / shortest side of an image, beyond: 422 (default 32)")
    serve.add_argument("--max-request-pixels", type=positive, default=2 * 4096 * 4096,
                       help="decoded pixels of all the images of one request, beyond: 413 (default 2x 4096x4096)")
    serve.add_argument("--max-explains", type=positive, default=2,
                       help="explanations admitted at once (one computes, the others wait), beyond: 503 (default 2)")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    try:
        import torch
        import uvicorn

        from imgclf.serve.app import ServeConfig, create_app
    except ImportError as err:
        raise ImgclfError(f"serving needs the serve extra ({err.name} is missing): "
                          "pip install 'imgclf[serve]'.") from err
    token = os.environ.get("IMGCLF_ADMIN_TOKEN") if args.admin else None
    if args.admin and not token:
        raise ImgclfError("--admin needs a token in the environment: export IMGCLF_ADMIN_TOKEN=<a long secret>.")
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, deadline_ms=args.deadline_ms,
                         invert=args.invert, feedback_db=args.feedback_db, admin_token=token,
                         models_dir=str(args.models_dir or args.run_dir.resolve().parent),
                         max_aspect=args.max_aspect, max_request_pixels=args.max_request_pixels,
                         max_explains=args.max_explains)
    app = create_app(args.run_dir, config)
    print(f"serving {args.run_dir} on http://{args.host}:{args.port} (API docs at /docs; Ctrl-C or SIGTERM stops "
          "after the requests in flight)", flush=True)
    # SIGTERM: uvicorn stops accepting, finishes in-flight requests and runs the app's shutdown, then re-raises
    # the signal to the handler it found; a no-op one lets the command end with status 0 (a normal stop)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    torch.set_num_threads(args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.verbose else "warning",
                timeout_graceful_shutdown=30)
