"""A private Orthanc for the PACS tests: started on loopback, with its own configuration and storage.

Why: the round trip must be tested against a real DICOMweb server (Debian's ``orthanc`` and
``orthanc-dicomweb``), never against a mock and never against whatever Orthanc service happens to
run on the machine. Each test session gets its own process on free ports, with storage in a
temporary folder that disappears with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = os.environ.get("SECONDREAD_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("SECONDREAD_ORTHANC_DICOMWEB",
                                 "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def missing() -> str | None:
    """Why Orthanc cannot be started here (binary or DICOMweb plugin absent), or None."""
    if not (Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK)):
        return f"Orthanc not found at {ORTHANC} (Debian package 'orthanc'; make system-deps)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"Orthanc's DICOMweb plugin not found at {DICOMWEB_PLUGIN} (package 'orthanc-dicomweb')"
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the test process dies (even killed),
    so an interrupted test run leaves no Orthanc behind. Elsewhere nothing happens."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Orthanc:
    """One Orthanc process with a private configuration; ``url`` is its REST root, ``dicomweb`` its
    DICOMweb root. Use as a context manager, or call ``start()`` / ``stop()``."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "orthanc.log"

    def config(self) -> dict:
        """The whole configuration: loopback only, no DICOM port, storage under ``workdir``."""
        return {
            "Name": "secondread-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "HttpTimeout": 60,
            "StableAge": 1,
            "SaveJobs": False,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Write the configuration, start the process, wait until ``/system`` answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([ORTHANC, "--no-jobs", str(cfg)], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509 (prctl only)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.proc.returncode}: "
                                   f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer {self.url}/system within {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate our process (and only ours), kill it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def _log_tail(self, n: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # --- REST helpers the tests use to set the scene and to check the results independently ---

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/octet-stream", accept: str | None = None):
        """One HTTP request to Orthanc's REST API; returns (status, bytes)."""
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return json.loads(body)

    def upload(self, path: str | os.PathLike) -> dict:
        """POST one DICOM file to ``/instances``; returns Orthanc's answer (ID, ParentStudy...)."""
        status, body = self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")
        if status != 200:
            raise RuntimeError(f"upload {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def __enter__(self) -> Orthanc:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def remove(self) -> None:
        """Stop and delete the storage (the caller's tmp folder usually does this anyway)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
