"""The HTTP face: ``create_app(settings)`` returns the FastAPI application (service + viewer).

Routes (``/v1/*`` need ``Authorization: Bearer <token>``):

- ``POST /v1/analyze``  multipart ``files`` (+ optional ``notes``, ``fhir``) -> the report.json dict
  (``?view=true`` adds ``view``: an id and geometry for the viewer's slice/overlay routes)
- ``GET /v1/models``    the shipped bundles with their model cards
- ``GET /v1/views/{id}`` and ``.../slice/{z}.png?center=&width=``, ``.../heatmap/{z}.png``,
  ``.../contour/{z}.png``: pixels and overlays of a study analysed with ``view=true`` (memory only)
- ``GET /v1/pacs/studies``, ``POST /v1/pacs/studies/{uid}/analyze``: when ``--pacs-url`` is set
- ``GET /healthz`` (no token), ``GET /openapi.json``, ``GET /`` (the viewer)

Why this shape: analysis is CPU-bound and runs in worker threads behind a limiter, so the event
loop keeps answering /healthz and the viewer while studies are analysed; each request's files live
in one temporary folder that is removed in a ``finally``.
"""

from __future__ import annotations

import contextlib

import hashlib
import hmac
import json
import logging
import queue
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.requests import ClientDisconnect

from .. import DISCLAIMER, __version__
from ..errors import SecondreadError
from .settings import Settings
from .uploads import BodyLimit, UploadRefused, receive_upload, remove_tree, study_path
from .views import ViewStore, make_view, render_contour, render_heat, render_slice

HERE = Path(__file__).parent
log = logging.getLogger("secondread.serve")

ANALYZE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "a PNG/JPEG image, a DICOM file, the DICOM files of one series, "
                                     "or one zip of a series"},
            "notes": {"type": "string", "format": "binary", "description": "free-text clinical note"},
            "fhir": {"type": "string", "format": "binary", "description": "FHIR R4 Bundle (JSON)"},
        }}}},
}

class BundlePool:
    """Loaded bundles, one copy per worker: Grad-CAM hooks into a network, so two threads must not
    explain with the same network object at once."""

    def __init__(self, copies: int):
        self.copies = copies
        self._pools: dict[str, queue.Queue] = {}

    def preload(self, names: list[str]) -> None:
        for name in names:
            self._pool(name)

    def _pool(self, name: str) -> queue.Queue:
        if name not in self._pools:
            from ..models.bundle import load_bundle
            q: queue.Queue = queue.Queue()
            for _ in range(self.copies):
                bundle = load_bundle(name)
                bundle.prepare = remember_last(bundle.prepare)
                q.put(bundle)
            self._pools[name] = q
        return self._pools[name]

    @contextmanager
    def borrow(self, name: str):
        pool = self._pool(name)
        bundle = pool.get()
        try:
            yield bundle
        finally:
            pool.put(bundle)


def remember_last(prepare):
    """``prepare`` that returns its last result again for the same pixels (same bytes).

    Why: the report's Grad-CAM and the viewer's both preprocess the same study; for a CT series
    the 3D resize is the slow step (seconds), and a bundle copy serves one request at a time, so
    one remembered result per copy is enough.
    """
    last: dict[str, Any] = {}

    def cached(pixels):
        arr = np.ascontiguousarray(pixels)
        key = (arr.shape, str(arr.dtype), hashlib.blake2b(arr.data, digest_size=16).digest())
        if last.get("key") != key:
            last.update(key=key, value=prepare(pixels))
        return last["value"].clone()
    return cached


def client_message(exc: SecondreadError, folder: Path, label: str) -> str:
    """The error line with the request folder replaced by the client's names (no server paths)."""
    if exc.path is None:
        return exc.problem
    try:
        rel = Path(exc.path).resolve().relative_to(folder.resolve())
    except ValueError:
        return exc.problem
    first, rest = (rel.parts[0], rel.parts[1:]) if rel.parts else ("", ())
    if first == "files":
        name = "/".join(rest) or label
    elif first == "series":
        name = "/".join((label, *rest))
    elif first in ("notes.txt", "fhir.json"):
        name = {"notes.txt": "notes", "fhir.json": "fhir"}[first]
    else:
        name = label
    return f"{name}: {exc.problem}"


def shipped_models() -> list[dict[str, Any]]:
    """Each shipped bundle's card and figures, read from its folder (no weights loaded)."""
    from ..models.bundle import CARD_FILE, CONFIG_FILE, ZOO, shipped_names
    out = []
    for name in shipped_names(task=None):
        config = json.loads((ZOO / name / CONFIG_FILE).read_text(encoding="utf-8"))
        card = ZOO / name / CARD_FILE
        out.append({"name": name, "task": config.get("task", "classification"), "version": config.get("version"),
                    "finding": config.get("finding"),
                    "modalities": config.get("modalities"), "input_shape": config.get("input_shape"),
                    "labels": config.get("labels"), "threshold": config.get("threshold"),
                    "operating_points": config.get("operating_points"), "metrics": config.get("metrics"),
                    "card": card.read_text(encoding="utf-8") if card.is_file() else None})
    return out


class Service:
    """The state behind the routes: settings, bundles, the analysis limiter and the memory caches
    (views for the viewer, DICOM outputs for download)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bundles = BundlePool(settings.workers)
        self.limiter = anyio.CapacityLimiter(settings.workers)
        self.views = ViewStore(settings.view_slots, settings.view_ttl_s)
        self.results = ViewStore(4 * settings.view_slots, settings.view_ttl_s)
        self.busy = 0

    def analyse(self, path: Path, out_dir: Path, notes: Path | None, fhir: Path | None,
                with_view: bool) -> dict[str, Any]:
        """Worker-thread body: the project's analysis of the saved study, plus the view and the
        DICOM outputs kept in memory for download."""
        from ..analyze import compose, load_study
        from ..records.merge import RecordSource
        from ..report import write_report
        record = RecordSource(notes, fhir)  # read by analyze with the model's body area and the study date
        study = load_study(path)
        name, choice = self._choose(study.image)
        with self.bundles.borrow(name) if name is not None else contextlib.nullcontext() as bundle:
            # bundle None: a CT volume, the lung-nodule search alone; the choice is reported as analyze does
            result = compose(study, bundle, record, choice=choice)
            report = result.report
            write_report(report, out_dir, result.pictures, result.datasets)
            if with_view:
                report["view"] = self._make_view(study.image, bundle, report, result.masks)
        self._keep_dicom(report, out_dir)
        return report

    def _choose(self, image):
        """The operator's ``--model``, else the project's choice for this image (we hold our own
        bundle copies: a bundle explaining in two threads at once would mix their Grad-CAM hooks).
        Returns the bundle name and the :class:`~secondread.models.choose.Choice` (None for ``--model``)."""
        if self.settings.model:
            return self.settings.model, None
        from ..models.choose import choose_bundle
        choice = choose_bundle(image)
        return choice.name, choice

    def _make_view(self, image, bundle, report: dict, masks=None) -> dict[str, Any]:
        view = make_view(image, bundle, report, masks)
        return {"id": self.views.add(view), **view.info}

    def _keep_dicom(self, report: dict, out_dir: Path) -> None:
        """SR/SEG/SC of a DICOM study: read into memory (the folder is deleted after the request)
        and offered at ``/v1/results/{id}/{file}`` in ``report["downloads"]``."""
        names = [f["file"] for f in (report.get("dicom") or {}).get("files") or []]
        if not names:
            return
        blobs = {name: (out_dir / name).read_bytes() for name in names}
        key = self.results.add(blobs)
        report["downloads"] = {name: f"/v1/results/{key}/{name}" for name in names}


def create_app(settings: Settings) -> FastAPI:
    """The service and viewer for ``settings`` (see the module docstring for the routes)."""
    service = Service(settings)
    from ..models.bundle import shipped_names
    service.bundles.preload([settings.model] if settings.model else shipped_names())
    # no /docs or /redoc: their pages load scripts from a CDN, and the service makes no one fetch
    # anything off this machine; the OpenAPI document itself is at /openapi.json
    app = FastAPI(title="secondread", version=__version__, docs_url=None, redoc_url=None,
                  description="A second reader for medical images. Decision support, not a diagnosis. " + DISCLAIMER)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    bearer = HTTPBearer(auto_error=False, description="the operator's API token")
    token = settings.token.encode()

    def authorised(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = creds.credentials.encode() if creds else b""
        if not hmac.compare_digest(given, token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _add_service_routes(app, service, authorised)
    _add_view_routes(app, service, authorised)
    _add_pacs_routes(app, service, authorised)

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness: answers at once, also while analyses run (no token needed)."""
        return {"status": "ok", "version": __version__, "busy": service.busy}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request):
        return templates.TemplateResponse(request, "index.html", {
            "version": __version__, "disclaimer": DISCLAIMER, "pacs": bool(settings.pacs_url)})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # no traceback, no values to clients
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


def _add_service_routes(app: FastAPI, service: Service, authorised) -> None:
    @app.post("/v1/analyze", dependencies=[Depends(authorised)], tags=["service"],
              openapi_extra={"requestBody": ANALYZE_BODY},
              responses={401: {"description": "no or wrong token"}, 413: {"description": "too large"},
                         422: {"description": "malformed input (one-line reason)"}})
    async def analyze(request: Request, view: bool = False) -> Response:
        """Analyse one study; the answer is the report.json contract (plus ``view`` when asked)."""
        folder = Path(tempfile.mkdtemp(prefix="secondread-request-"))
        label = "upload"
        try:
            upload = await receive_upload(request, folder, service.settings)
            path, label = study_path(upload, service.settings)
            return await run_analysis(service, path, folder, upload.notes, upload.fhir, view)
        except UploadRefused as exc:
            return JSONResponse({"detail": exc.reason}, status_code=exc.status)
        except SecondreadError as exc:
            return JSONResponse({"detail": client_message(exc, folder, label)}, status_code=422)
        except ClientDisconnect:  # the client left mid-upload: nobody to answer, nothing to keep
            return Response(status_code=400)
        finally:
            await anyio.to_thread.run_sync(remove_tree, folder)

    @app.get("/v1/models", dependencies=[Depends(authorised)], tags=["service"])
    async def models() -> list[dict[str, Any]]:
        """The shipped model bundles: name, finding, modalities, operating points, figures, card."""
        return shipped_models()


async def run_analysis(service: Service, path: Path, folder: Path, notes, fhir, view: bool) -> Response:
    """Analyse in a worker thread (at most ``workers`` at once); answer the report as JSON."""
    from ..report.build import to_json

    def analyse_to_json() -> str:  # serialised in the worker too: the event loop only sends bytes
        return to_json(service.analyse(path, folder / "out", notes, fhir, view))

    service.busy += 1
    try:
        body = await anyio.to_thread.run_sync(analyse_to_json, limiter=service.limiter)
    except (SecondreadError, UploadRefused):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug of ours: the type only, in the log and to the client
        log.error("internal error while analysing: %s", type(exc).__name__)
        return JSONResponse({"detail": f"internal error while analysing ({type(exc).__name__})"}, status_code=500)
    finally:
        service.busy -= 1
    return Response(body, media_type="application/json")


def _add_view_routes(app: FastAPI, service: Service, authorised) -> None:
    def lookup(view_id: str, z: int | None = None, layer: str | None = None):
        view = service.views.get(view_id)
        if view is None:
            raise HTTPException(404, "no such view (expired or never made): analyse the study again")
        if z is not None and not 0 <= z < view.info["slices"]:
            raise HTTPException(404, f"slice {z} out of range 0..{view.info['slices'] - 1}")
        if layer is not None and getattr(view, layer) is None:
            raise HTTPException(404, f"this study has no {layer} overlay")
        return view

    async def png(render, *args) -> Response:
        data = await anyio.to_thread.run_sync(render, *args)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/v1/results/{result_id}/{name}", dependencies=[Depends(authorised)], tags=["service"])
    async def result_file(result_id: str, name: str) -> Response:
        """A DICOM output (sr.dcm, seg.dcm, sc.dcm) of a recent analysis, from memory."""
        blobs = service.results.get(result_id)
        if blobs is None or name not in blobs:
            raise HTTPException(404, "no such result (expired or never made): analyse the study again")
        return Response(blobs[name], media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/v1/views/{view_id}", dependencies=[Depends(authorised)], tags=["viewer"])
    async def view_info(view_id: str) -> dict[str, Any]:
        return lookup(view_id).info

    @app.get("/v1/views/{view_id}/slice/{z}.png", dependencies=[Depends(authorised)], tags=["viewer"])
    async def view_slice(view_id: str, z: int, center: float | None = None, width: float | None = None):
        view = lookup(view_id, z)
        window = view.info["window"]
        width = width if width and width > 0 else window["width"]
        return await png(render_slice, view, z, window["center"] if center is None else center, width)

    @app.get("/v1/views/{view_id}/heatmap/{z}.png", dependencies=[Depends(authorised)], tags=["viewer"])
    async def view_heat(view_id: str, z: int):
        return await png(render_heat, lookup(view_id, z, "heat"), z)

    @app.get("/v1/views/{view_id}/contour/{z}.png", dependencies=[Depends(authorised)], tags=["viewer"])
    async def view_contour(view_id: str, z: int):
        return await png(render_contour, lookup(view_id, z, "mask"), z)


def pacs_input(files: list[Path]) -> Path:
    """What the viewer analyses of a fetched study: its largest volume, else its first image
    (the PACS module's ``plan_study`` splits the study and leaves out our own SR/SEG/SC)."""
    from ..pacs.study import plan_study
    items = plan_study(files)[0]
    if not items:
        raise SecondreadError(None, "the study holds no image this service can analyse")
    def size(item) -> int:
        return sum(1 for _ in item.path.iterdir()) if item.path.is_dir() else 1
    return max(items, key=lambda item: (item.path.is_dir(), size(item))).path


def _add_pacs_routes(app: FastAPI, service: Service, authorised) -> None:
    def client():
        if not service.settings.pacs_url:
            raise HTTPException(404, "no PACS configured (start with --pacs-url URL)")
        try:
            from ..pacs import PacsClient
        except ImportError:
            raise HTTPException(501, "this build has no PACS client (secondread.pacs.PacsClient)") from None
        return PacsClient(service.settings.pacs_url)

    @app.get("/v1/pacs/studies", dependencies=[Depends(authorised)], tags=["pacs"])
    async def pacs_studies() -> Any:
        """The studies the configured PACS holds (QIDO-RS), for the viewer's list."""
        pacs = client()
        try:
            return await anyio.to_thread.run_sync(pacs.studies)
        except SecondreadError as exc:
            raise HTTPException(502, exc.problem) from None

    @app.post("/v1/pacs/studies/{uid}/analyze", dependencies=[Depends(authorised)], tags=["pacs"])
    async def pacs_analyze(uid: str, view: bool = False) -> Response:
        """Fetch a study from the PACS (WADO-RS) into a temporary folder and analyse it."""
        pacs = client()
        folder = Path(tempfile.mkdtemp(prefix="secondread-request-"))
        try:
            try:
                files = await anyio.to_thread.run_sync(pacs.fetch, uid, folder / "series")
            except SecondreadError as exc:
                return JSONResponse({"detail": exc.problem}, status_code=502)
            path = await anyio.to_thread.run_sync(pacs_input, [Path(f) for f in files or []])
            return await run_analysis(service, path, folder, None, None, view)
        except SecondreadError as exc:
            return JSONResponse({"detail": client_message(exc, folder, "study")}, status_code=422)
        finally:
            await anyio.to_thread.run_sync(remove_tree, folder)
