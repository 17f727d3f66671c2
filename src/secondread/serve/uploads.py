"""Getting a client's files onto disk safely: size limits, multipart streaming, zip extraction.

Why: an upload is untrusted input. It may be bigger than announced, have no announced size at all,
carry file names like ``../../etc/passwd``, or be a zip that inflates to terabytes. Everything the
client sends goes to one per-request folder (Starlette's own form parser would spool large parts to
anonymous files in ``$TMPDIR``: outside that folder, so it is not used here), sizes are counted as
the bytes arrive, and every refusal is a :class:`UploadRefused` with an HTTP status and one line.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from python_multipart.multipart import MultipartParser, parse_options_header

from .settings import Settings

CHUNK = 1024 * 1024
RECORD_FIELDS = {"notes": "notes.txt", "fhir": "fhir.json"}


class UploadRefused(Exception):
    """A request the service will not process: ``status`` (413, 422, 400) and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, " ".join(reason.split())


class BodyTooLarge(UploadRefused):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {_mb(limit)}")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


# --- the whole body: announced and counted ----------------------------------------------------

class BodyLimit:
    """ASGI middleware: 413 for a Content-Length over the limit before any byte is read, and for a
    body (chunked or lying) that grows past it while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        announced = dict(scope.get("headers") or []).get(b"content-length")
        if announced is not None and (not announced.isdigit() or int(announced) > self.max_bytes):
            return await _send_refusal(send, BodyTooLarge(self.max_bytes))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if not started:
                await _send_refusal(send, exc)


async def _send_refusal(send, exc: UploadRefused) -> None:
    body = json.dumps({"detail": exc.reason}).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- names ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(client_name: str | None, fallback: str) -> str:
    """A plain file name made from what the client called the file: last path part only, odd
    characters replaced, never empty, never ``.`` or ``..``, at most 100 characters (suffix kept)."""
    base = re.split(r"[\\/]", client_name or "")[-1]
    base = _UNSAFE.sub("_", base).strip("._") or fallback
    if len(base) > 100:
        stem, dot, suffix = base.rpartition(".")
        base = (stem[:90] + "." + suffix[:9]) if dot and len(suffix) < 10 else base[:100]
    return base


def unique(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-2.suffix`` ... when that is taken."""
    path, n = folder / name, 1
    while path.exists():
        n += 1
        stem, dot, suffix = name.rpartition(".")
        path = folder / (f"{stem}-{n}.{suffix}" if dot and stem else f"{name}-{n}")
    return path


# --- multipart, streamed to disk ---------------------------------------------------------------

@dataclass
class Upload:
    """What one analyse request brought: saved files (with the client's names) and record parts."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    client_names: dict[Path, str] = field(default_factory=dict)
    notes: Path | None = None
    fhir: Path | None = None


class MultipartSink:
    """Callbacks for python-multipart's streaming parser: each part goes straight into a file in
    the request's folder (``files`` under ``files/``; ``notes``/``fhir`` as notes.txt/fhir.json)."""

    def __init__(self, upload: Upload, settings: Settings):
        self.upload, self.settings = upload, settings
        self._header_field, self._header_value = b"", b""
        self._headers: dict[bytes, bytes] = {}
        self._out = None
        self._field: str | None = None
        self._size = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._open, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._field, self._size = {}, None, 0

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _open(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "files":
            if len(self.upload.files) >= self.settings.max_files:
                raise UploadRefused(413, f"more than {self.settings.max_files} files in one request")
            folder = self.upload.folder / "files"
            folder.mkdir(exist_ok=True)
            client = options.get(b"filename", b"").decode("utf-8", "replace")
            path = unique(folder, safe_name(client, f"file{len(self.upload.files) + 1}"))
            self.upload.files.append(path)
            self.upload.client_names[path] = safe_name(client, path.name)
        elif name in RECORD_FIELDS:
            if getattr(self.upload, name) is not None:
                raise UploadRefused(422, f"more than one '{name}' part")
            path = self.upload.folder / RECORD_FIELDS[name]
            setattr(self.upload, name, path)
        else:
            raise UploadRefused(422, f"unexpected form field {name[:40]!r} (expected files, notes, fhir)")
        self._field = name
        self._out = open(path, "xb")  # noqa: SIM115 - stays open across the parser's callbacks

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._field in RECORD_FIELDS and self._size > self.settings.max_record_bytes:
            raise UploadRefused(413, f"the '{self._field}' part is larger than {_mb(self.settings.max_record_bytes)}")
        self._out.write(data[start:end])

    def _end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def close(self) -> None:
        self._end()


async def receive_upload(request, folder: Path, settings: Settings) -> Upload:
    """Stream a ``multipart/form-data`` request body into ``folder``; return what arrived."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadRefused(422, "the request must be multipart/form-data with 'files' parts")
    upload = Upload(folder=folder)
    sink = MultipartSink(upload, settings)
    parser = MultipartParser(params[b"boundary"], sink.callbacks(), max_size=settings.max_upload_bytes)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except UploadRefused:
        raise
    except Exception as exc:  # python-multipart's own errors: a malformed body
        if isinstance(exc, OSError):
            raise
        raise UploadRefused(422, f"malformed multipart body ({type(exc).__name__})") from None
    finally:
        sink.close()
    if not upload.files:
        raise UploadRefused(422, "no 'files' part: send the image, the DICOM file(s) or a zip of a series")
    return upload


# --- zip archives ------------------------------------------------------------------------------

def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be extracted (absolute, escaping, a link or device), or None."""
    name = info.filename
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute():
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "has a '..' path (path traversal)"
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool recorded no file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "is a symbolic link or special file"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def extract_zip(archive: Path, dest: Path, settings: Settings, label: str) -> Path:
    """Extract the regular files of ``archive`` flat into ``dest`` (new), refusing unsafe members
    (422) and inflating no more than ``max_unzipped_bytes`` in total, no member past
    ``max_zip_ratio`` (413): counted on the bytes actually inflated, not on the header's claims."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadRefused(422, f"{label}: not a readable zip archive ({type(exc).__name__})") from None
    with zf:
        members = zf.infolist()
        if len(members) > settings.max_zip_members:
            raise UploadRefused(422, f"{label}: more than {settings.max_zip_members} members in the zip")
        for info in members:
            problem = _member_problem(info)
            if problem:
                raise UploadRefused(422, f"{label}: a member {problem}; refused")
        dest.mkdir()
        total = 0
        for info in members:
            if info.is_dir():
                continue
            out = unique(dest, safe_name(info.filename, "member"))
            total = _inflate(zf, info, out, total, settings, label)
    if not any(dest.iterdir()):
        raise UploadRefused(422, f"{label}: the zip holds no files")
    return dest


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, total: int, settings: Settings,
             label: str) -> int:
    written = 0
    limit_ratio = settings.max_zip_ratio * max(info.compress_size, 1)
    try:
        with zf.open(info) as src, open(out, "xb") as dst:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if total + written > settings.max_unzipped_bytes:
                    raise UploadRefused(413, f"{label}: the zip inflates to more than "
                                             f"{_mb(settings.max_unzipped_bytes)}; refused (zip bomb?)")
                if written > 1024 * 1024 and written > limit_ratio:
                    raise UploadRefused(413, f"{label}: a member is compressed more than "
                                             f"{settings.max_zip_ratio:g}:1; refused (zip bomb?)")
                dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise UploadRefused(422, f"{label}: a member cannot be extracted ({type(exc).__name__})") from None
    return total + written


def study_path(upload: Upload, settings: Settings) -> tuple[Path, str]:
    """The path ``analyze_image`` reads and the name to show the client.

    One plain file: itself. One zip: its members as a series folder (or the single member). Several
    files: a series folder (they must be the slices of one DICOM series)."""
    files = upload.files
    if len(files) == 1 and not is_zip(files[0]):
        return files[0], upload.client_names[files[0]]
    if len(files) == 1:
        label = upload.client_names[files[0]]
        series = extract_zip(files[0], upload.folder / "series", settings, label)
        files[0].unlink()
        members = sorted(series.iterdir())
        return (members[0], label) if len(members) == 1 else (series, label)
    if any(is_zip(f) for f in files):
        raise UploadRefused(422, "send one zip, or several DICOM files, not both")
    return files[0].parent, f"{len(files)} files"


def remove_tree(folder: Path) -> None:
    """Remove the request's folder, whatever happened (files are closed by then)."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # e.g. permissions changed underneath: try once more, loudly
        shutil.rmtree(folder)
