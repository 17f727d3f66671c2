"""A small DICOMweb client: list studies (QIDO-RS), fetch one (WADO-RS), store results (STOW-RS).

Why: hospital IT connects tools through DICOMweb. ``dicomweb-client`` speaks the protocol; this
layer only adds what secondread needs around it: studies described without patient identifiers,
instances written to disk as ordinary ``.dcm`` files (one folder per series, so a series folder is
what ``secondread.io.load_image`` reads as a volume), and every network or server failure turned
into one ``SecondreadError`` line naming the URL (and study) and the problem.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..atomic import replacing
from ..errors import SecondreadError

log = logging.getLogger("secondread.pacs")

# What `studies()` asks for and returns: technical facts only. Patient name, ID, birth date and
# accession number are never requested, and dropped if a server sends them anyway.
STUDY_FIELDS = {
    "0020000D": "study_uid",
    "00080061": "modalities",
    "00201206": "series",
    "00201208": "instances",
    "00080020": "date",
    "00080030": "time",
}
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # keep the stored encoding: no transcoding


def _value(element: dict | None) -> list:
    return list((element or {}).get("Value") or [])


def describe_study(qido: dict[str, Any]) -> dict[str, Any]:
    """One QIDO-RS study result (DICOM JSON) as a small dict without identifiers."""
    out: dict[str, Any] = {}
    for tag, key in STUDY_FIELDS.items():
        values = _value(qido.get(tag))
        if key == "modalities":
            out[key] = [str(v) for v in values]
        elif key in ("series", "instances"):
            out[key] = int(values[0]) if values else None
        else:
            out[key] = str(values[0]) if values else None
    return out


def _since_filter(since: Any) -> dict[str, str]:
    """QIDO date range ``YYYYMMDD-`` from a date, a datetime or a ``YYYYMMDD`` string."""
    if since is None:
        return {}
    if isinstance(since, (_dt.date, _dt.datetime)):
        since = since.strftime("%Y%m%d")
    text = str(since).replace("-", "")
    if not (len(text) == 8 and text.isdigit()):
        raise SecondreadError(None, f"since: expected a date YYYYMMDD, got {since!r}")
    return {"StudyDate": f"{text}-"}


class PacsClient:
    """A DICOMweb server (``url`` is its root, e.g. ``http://127.0.0.1:8042/dicom-web``).

    Every method raises ``SecondreadError`` (one line: URL, study, problem) on connection
    refused, timeouts, HTTP errors (404: unknown study) and answers that are not DICOM.
    """

    def __init__(self, url: str, timeout: float = 60.0, headers: dict[str, str] | None = None):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        try:
            self._client = DICOMwebClient(url=self.url, timeout=timeout, headers=headers)
        except ValueError as exc:  # malformed URL
            raise SecondreadError(url, f"not a DICOMweb URL ({exc})") from None
        # One retry policy for the whole project: a busy server (429/503) gets a few short retries.
        self._client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)

    # --- errors ---

    def _error(self, exc: BaseException, study_uid: str | None = None) -> SecondreadError:
        """Turn what requests / dicomweb-client / pydicom raised into one line without identifiers."""
        import requests

        where = self.url if study_uid is None else f"{self.url} study {study_uid}"
        if isinstance(exc, SecondreadError):
            return exc
        if isinstance(exc, ValueError):  # a 200 whose body is not DICOM JSON / multipart DICOM
            problem = f"the answer is not DICOMweb ({type(exc).__name__})"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            problem = "cannot connect (connection refused or host unreachable)"
            if isinstance(exc, requests.exceptions.ReadTimeout) or "timed out" in str(exc):
                problem = "the server did not answer in time"
        elif isinstance(exc, requests.exceptions.Timeout):
            problem = "the server did not answer in time"
        elif isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            reason = exc.response.reason or ""
            if status == 404 and study_uid is not None:
                problem = "study not found on the server (HTTP 404)"
            elif status == 404:
                problem = "not found (HTTP 404): is this the DICOMweb root?"
            elif status in (401, 403):
                problem = f"access refused (HTTP {status})"
            else:
                problem = f"the server answered HTTP {status} {reason}".strip()
        elif isinstance(exc, requests.exceptions.RequestException):
            problem = f"request failed ({type(exc).__name__})"
        else:  # a 200 whose body is not DICOM / DICOM JSON (wrong URL, a proxy's HTML page...)
            problem = f"the answer is not DICOMweb ({type(exc).__name__})"
        return SecondreadError(where, problem)

    # --- QIDO-RS ---

    def studies(self, since: Any = None) -> list[dict[str, Any]]:
        """The server's studies: ``study_uid``, ``modalities``, ``series``, ``instances``,
        ``date``, ``time`` (no patient identifiers). ``since``: only studies dated on/after it."""
        filters = _since_filter(since)
        try:
            found = self._client.search_for_studies(fields=list(STUDY_FIELDS), search_filters=filters,
                                                    get_remaining=True)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            raise self._error(exc) from None
        if not isinstance(found, list) or not all(isinstance(s, dict) for s in found):
            raise SecondreadError(self.url, "the answer is not a DICOM JSON list of studies")
        studies = [describe_study(s) for s in found]
        return [s for s in studies if s["study_uid"]]

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's series: ``series_uid``, ``modality``, ``description``, ``instances``."""
        fields = ["0020000E", "00080060", "0008103E", "00201209"]
        try:
            found = self._client.search_for_series(study_uid, fields=fields)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, study_uid) from None
        out = []
        for s in found:
            values = {tag: _value(s.get(tag)) for tag in fields}
            out.append({"series_uid": str(values["0020000E"][0]) if values["0020000E"] else None,
                        "modality": str(values["00080060"][0]) if values["00080060"] else None,
                        "description": str(values["0008103E"][0]) if values["0008103E"] else None,
                        "instances": int(values["00201209"][0]) if values["00201209"] else None})
        return out

    # --- WADO-RS ---

    def iter_instances(self, study_uid: str) -> Iterator[Any]:
        """The study's instances as pydicom datasets, streamed in their stored transfer syntax."""
        try:
            yield from self._client.iter_study(study_uid, media_types=ANY_TRANSFER_SYNTAX)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, study_uid) from None

    def fetch(self, study_uid: str, dest_dir: str | os.PathLike) -> list[Path]:
        """Write every instance of the study under ``dest_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

        Each file is written to a temporary name and renamed, so a file that exists is whole.
        Returns the paths written (sorted). An unknown study is an error, as is an empty one.
        """
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for ds in self.iter_instances(study_uid):
            written.append(self._write_instance(ds, dest, study_uid))
        if not written:
            raise SecondreadError(f"{self.url} study {study_uid}", "the server returned no instances")
        log.info("fetched %d instance(s) of study %s", len(written), study_uid)
        return sorted(written)

    def _write_instance(self, ds: Any, dest: Path, study_uid: str) -> Path:
        series_uid = _safe_name(ds.get("SeriesInstanceUID"), "series")
        sop_uid = _safe_name(ds.get("SOPInstanceUID"), "instance")
        folder = dest / series_uid
        folder.mkdir(exist_ok=True)
        target = folder / f"{sop_uid}.dcm"
        try:
            with replacing(target) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot re-encode
            raise SecondreadError(f"{self.url} study {study_uid}",
                                  f"cannot write instance {sop_uid} ({type(exc).__name__})") from None
        return target

    # --- STOW-RS ---

    def store(self, paths: Iterable[str | os.PathLike]) -> int:
        """Send DICOM files with STOW-RS; return how many the server accepted.

        Raises ``SecondreadError`` if a file cannot be read, the request fails, or the server
        lists any instance as failed (its FailedSOPSequence).
        """
        import pydicom

        datasets = []
        for p in paths:
            try:
                datasets.append(pydicom.dcmread(p))
            except Exception as exc:  # noqa: BLE001
                raise SecondreadError(p, f"not a readable DICOM file ({type(exc).__name__})") from None
        if not datasets:
            return 0
        try:
            answer = self._client.store_instances(datasets)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, datasets[0].get("StudyInstanceUID")) from None
        failed = len(answer.get("FailedSOPSequence", []) or []) if answer is not None else 0
        if failed:
            raise SecondreadError(f"{self.url} study {datasets[0].get('StudyInstanceUID')}",
                                  f"the server refused {failed} of {len(datasets)} instance(s)")
        log.info("stored %d instance(s)", len(datasets))
        return len(datasets)


def _safe_name(uid: Any, default: str) -> str:
    """A UID as a file name: digits and dots only (anything else from a server is not trusted)."""
    text = str(uid or "")
    if text and all(c.isdigit() or c == "." for c in text) and len(text) <= 64:
        return text
    return f"{default}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
