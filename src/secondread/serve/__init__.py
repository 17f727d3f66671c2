"""``secondread serve``: the HTTP service and its web viewer (FastAPI + uvicorn).

Why a package of its own: the command line only registers the options here; FastAPI, uvicorn and
the models are imported when the service actually starts, so ``secondread --help`` stays fast.
See :mod:`secondread.serve.app` for the routes.
"""

from __future__ import annotations

import argparse

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread serve`` on the top-level command line."""
    s = sub.add_parser("serve", help="run the HTTP service and the web viewer",
                       description="Serve POST /v1/analyze, GET /v1/models, /healthz, /openapi.json and the "
                                   "viewer at /. Needs a bearer token: $SECONDREAD_API_TOKEN or --token-file.")
    s.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--token-file", metavar="FILE", help="file whose first line is the API token "
                                                        "(default: $SECONDREAD_API_TOKEN)")
    s.add_argument("--max-upload-mb", type=float, default=512, metavar="N",
                   help="largest request body in MB; larger ones get 413 (default 512)")
    s.add_argument("--pacs-url", metavar="URL", help="DICOMweb root of a PACS the viewer can pick studies from")
    s.add_argument("--model", metavar="NAME", help="always use this bundle (default: chosen per study)")
    s.add_argument("--workers", type=int, default=2, metavar="N", help="analyses at once (default 2)")
    s.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace):
    """Settings from the command line; raises SecondreadError without a usable token."""
    from ..errors import SecondreadError
    from .settings import MB, Settings, read_token
    if args.max_upload_mb <= 0 or args.workers < 1:
        raise SecondreadError(None, "--max-upload-mb and --workers must be positive")
    if args.model:
        from ..models.bundle import load_bundle
        load_bundle(args.model)  # an unknown name fails now, not on the first request
    max_upload = int(args.max_upload_mb * MB)
    return Settings(token=read_token(args.token_file), max_upload_bytes=max_upload,
                    max_unzipped_bytes=max(4 * max_upload, 2048 * MB), workers=args.workers,
                    model=args.model, pacs_url=args.pacs_url)


def share_cores(workers: int) -> None:
    """Give each analysis worker its share of the cores for PyTorch's intra-op threads.

    Why: by default every analysis would use all cores; with several workers the threads then
    fight (OpenMP spin-waits), and on a busy 2-core machine a 28 x 28 model became ~30x slower
    (benchmarks/service.py measures it).
    """
    import os

    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    import uvicorn

    from .app import create_app
    share_cores(settings.workers)
    app = create_app(settings)
    print(f"secondread: serving on http://{args.host}:{args.port}/ (viewer at /, API under /v1, OpenAPI at /openapi.json)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", server_header=False)
    return 0
