"""DICOMweb: fetch a study from a PACS, analyse it, store the results back; watch for new studies.

``secondread pacs analyze --url URL --study UID`` and ``secondread pacs watch --url URL``. The
client (``PacsClient``: ``studies``, ``fetch``, ``store``) is also what the service's viewer uses
to pick studies from a PACS. Imports of the network and model stacks stay inside the commands so
that ``secondread --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..errors import SecondreadError

__all__ = ["PacsClient", "add_parser"]


def __getattr__(name: str):  # PacsClient without importing requests at `secondread --help`
    if name == "PacsClient":
        from .client import PacsClient
        return PacsClient
    raise AttributeError(name)


def _probability(p) -> str:
    from ..finding import format_probability

    return "n/a" if p is None else format_probability(p, 3)


def _check_model(name: str | None) -> None:
    """An unknown ``--model`` is one error before anything is fetched, not one per input."""
    if name is not None:
        from .study import _bundle
        _bundle(name)


def cmd_pacs_analyze(args: argparse.Namespace) -> int:
    """Fetch one study, analyse each input, store the DICOM results; exit 1 if any input failed."""
    from .client import PacsClient
    from .study import run_study

    _check_model(args.model)
    client = PacsClient(args.url, timeout=args.timeout)
    with tempfile.TemporaryDirectory(prefix="secondread-pacs-out-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        result = run_study(client, args.study, out, args.model)
    for r in result.items:
        if r.ok:
            where = f" -> {r.report_dir / 'report.html'}" if args.out else ""
            print(f"{r.key}: {r.finding} p={_probability(r.probability)} "
                  f"{'SUGGESTED' if r.suggested else 'not suggested'}, {r.stored} object(s) stored{where}")
        else:
            print(f"secondread: error: {r.error}", file=sys.stderr)
    if not result.items:
        print(f"study {args.study}: nothing to analyse"
              + (f" ({result.skipped} input(s) already have results)" if result.skipped else ""))
    if result.failed:
        print(f"secondread: {len(result.failed)} of {len(result.items)} input(s) failed; "
              "the others were analysed and stored", file=sys.stderr)
        return 1
    return 0


def cmd_pacs_watch(args: argparse.Namespace) -> int:
    from .watch import watch

    if args.interval <= 0:
        raise SecondreadError(None, "--interval must be positive")
    if args.max_attempts < 1:
        raise SecondreadError(None, "--max-attempts must be at least 1")
    _check_model(args.model)
    if args.settle < 0:
        raise SecondreadError(None, "--settle cannot be negative")
    return watch(args.url, args.state, args.out, args.interval, args.once, args.model,
                 args.max_attempts, args.timeout, args.settle)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, metavar="URL",
                   help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--out", metavar="DIR", help="keep the report folders here (default: a temporary "
                   "folder, removed once the results are stored)")
    p.add_argument("--model", default=None, metavar="NAME", help="bundle for every input (default: "
                   "chosen per input)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per HTTP request")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread pacs ...`` (analyze, watch) on the top-level command line."""
    p = sub.add_parser("pacs", help="analyse studies on a PACS over DICOMweb and store the results back")
    ps = p.add_subparsers(dest="pacs_command", required=True)

    a = ps.add_parser("analyze", help="fetch a study (WADO-RS), analyse it, store SR/SEG/SC (STOW-RS)")
    _common(a)
    a.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    a.set_defaults(func=cmd_pacs_analyze)

    w = ps.add_parser("watch", help="poll for studies (QIDO-RS) and analyse each exactly once")
    _common(w)
    w.add_argument("--state", default="secondread-pacs.sqlite", metavar="FILE.sqlite",
                   help="what was done (study UID, status, attempts, error); default %(default)s")
    w.add_argument("--interval", type=float, default=30.0, metavar="S", help="seconds between polls")
    w.add_argument("--once", action="store_true", help="poll once, analyse what is new, exit")
    w.add_argument("--max-attempts", type=int, default=3, metavar="N",
                   help="tries per failing study before it is left as failed (default 3)")
    w.add_argument("--settle", type=float, default=60.0, metavar="S",
                   help="take a study only once its instance count has not changed for S seconds, "
                   "so a study still being sent is not analysed half-received (default %(default)s; "
                   "0: at once)")
    w.set_defaults(func=cmd_pacs_watch)
