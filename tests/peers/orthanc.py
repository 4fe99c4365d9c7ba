"""A throwaway Orthanc server (Debian package orthanc) as the hospital PACS in integration tests.

    with orthanc(tmp_path, modalities={"agent": ("NMIP_AGENT", "127.0.0.1", agent_port)}) as pacs:
        study = pacs.upload(path)["ParentStudy"]
        pacs.push_study("agent", study)          # C-STORE of the whole study to the agent

Each server is a child process of the test: its own JSON config, storage and index under
tmp_path, a free DICOM port and a free HTTP port, no plugins. The system service that the
Debian package installs is never used (nor started). HTTP goes through the standard library
only (urllib), so the helpers need no extra dependency.

Orthanc 1.10 has no bind-address option: both servers listen on all interfaces. The config
keeps them to this machine's own traffic where it can: the REST API answers loopback clients
only (RemoteAccessAllowed false), and C-ECHO/C-STORE are accepted only from the declared
modalities, from their declared host (DicomAlwaysAllowEcho/Store false, DicomCheckModalityHost
true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ports import LOOPBACK, free_port, stop_process

ORTHANC = "/usr/sbin/Orthanc"
STARTUP_TIMEOUT_S = 60.0
_POLL_S = 0.05
# Loopback only: never through an http_proxy that the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

__all__ = ["Orthanc", "OrthancError", "orthanc", "orthanc_available", "orthanc_config"]


def orthanc_available() -> bool:
    """True when the Orthanc server binary can be run (Debian package orthanc)."""
    return os.access(ORTHANC, os.X_OK)


class OrthancError(RuntimeError):
    """Orthanc's REST API answered with an HTTP error (its JSON error body, when it sent one, is `body`)."""

    def __init__(self, method: str, url: str, status: int, body: Any):
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        super().__init__(f"{method} {url} -> HTTP {status}: {body}")


# A modality: (AET, host, port), or Orthanc's own object form ({"AET": ..., "Host": ...,
# "Port": ..., plus e.g. "Timeout", "AllowTranscoding"}) for more options.
Modality = tuple[str, str, int] | Mapping[str, Any]


def orthanc_config(
    root: Path,
    *,
    dicom_port: int,
    http_port: int,
    aet: str = "ORTHANC",
    modalities: Mapping[str, Modality] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration orthanc() writes (every key not given here takes Orthanc's built-in default).

    The Debian package's /etc/orthanc/*.json is NOT read: Orthanc loads only the file it is
    given on its command line.
    """
    declared: dict[str, Any] = {}
    for name, modality in (modalities or {}).items():
        if isinstance(modality, Mapping):
            declared[name] = dict(modality)
        else:
            modality_aet, host, port = modality
            declared[name] = [modality_aet, host, int(port)]
    config: dict[str, Any] = {
        "Name": f"nmip-test-{dicom_port}",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [],  # the package's /usr/share/orthanc/plugins (worklists, serve-folders) stay off
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # REST API: loopback clients only
        "AuthenticationEnabled": False,
        "HttpDescribeErrors": True,
        "HttpThreadsCount": 8,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "MetricsEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": False,  # only the declared modalities may associate ...
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,  # ... and only from their declared host
        "DicomModalities": declared,
        "DicomModalitiesInDatabase": False,
        "DicomScpTimeout": 30,
        "DicomScuTimeout": 30,
        # Release the association as soon as a push ends (Orthanc's default keeps it open 5 s
        # for a possible next job): a push is then exactly one association, as from a PACS.
        "DicomAssociationCloseDelay": 0,
        "SaveJobs": False,
        "SyncStorageArea": False,  # no fsync per instance: a test's data is thrown away
        "StableAge": 60,
    }
    config.update(extra or {})
    return config


@dataclass
class Orthanc:
    """A running Orthanc; see orthanc()."""

    http_url: str
    dicom_port: int
    http_port: int
    aet: str
    root: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    # --- HTTP plumbing

    def request(self, method: str, path: str, body: bytes | Any | None = None, *, timeout: float = 30) -> Any:
        """`method` http_url+path; a non-bytes body is sent as JSON. Returns the decoded JSON answer
        (or the raw bytes when it is not JSON); raises OrthancError on an HTTP error status."""
        url = self.http_url + path
        headers = {"Accept": "application/json"}
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
            headers["Content-Type"] = "application/dicom"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            exc.close()
            try:
                detail: Any = json.loads(payload)
            except ValueError:
                detail = payload.decode(errors="replace")
            raise OrthancError(method, url, exc.code, detail) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, *, timeout: float = 30) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: bytes | Any | None = None, *, timeout: float = 30) -> Any:
        return self.request("POST", path, body if body is not None else b"", timeout=timeout)

    # --- what the tests use

    def system(self) -> dict[str, Any]:
        """GET /system: Version, DicomAet, DicomPort, HttpPort, Name, ..."""
        answer: dict[str, Any] = self.get("/system")
        return answer

    def upload(self, path: Path | str) -> dict[str, Any]:
        """POST /instances with the file's bytes: {"ID", "ParentStudy", "ParentSeries", "ParentPatient", "Status", ...}.

        Status is "Success", or "AlreadyStored" for an instance Orthanc already had.
        """
        answer: dict[str, Any] = self.post("/instances", Path(path).read_bytes())
        return answer

    def studies(self) -> list[str]:
        """GET /studies: Orthanc's IDs of its studies (not Study Instance UIDs)."""
        answer: list[str] = self.get("/studies")
        return answer

    def push_study(self, modality: str, study_id: str, *, synchronous: bool = True, timeout: float = 120) -> dict[str, Any]:
        """POST /modalities/{modality}/store {"Resources": [study_id], "Synchronous": ...}: C-STORE the study.

        Synchronous: the answer comes when the job ended, with InstancesCount and
        FailedInstancesCount; a failed job (e.g. a refused store) raises OrthancError
        (HTTP 500). Asynchronous: the answer is {"ID": job, "Path": "/jobs/..."} at once;
        follow it with wait_job().
        """
        body = {"Resources": [study_id], "Synchronous": synchronous, "Timeout": int(max(1, min(timeout, 3600)))}
        answer: dict[str, Any] = self.post(f"/modalities/{modality}/store", body, timeout=timeout)
        return answer

    def job(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.get(f"/jobs/{job_id}")
        return answer

    def wait_job(self, job_id: str, *, timeout: float = 120) -> dict[str, Any]:
        """Poll GET /jobs/{id} until its State is Success or Failure; return the job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("State") in ("Success", "Failure"):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Orthanc job {job_id} still {job.get('State')} after {timeout:g} s: {job}")
            time.sleep(_POLL_S)

    def echo(self, modality: str, *, timeout: float = 10) -> bool:
        """POST /modalities/{modality}/echo: True when the modality answered the C-ECHO."""
        try:
            self.post(f"/modalities/{modality}/echo", {"Timeout": int(max(1, timeout))}, timeout=timeout + 5)
        except OrthancError:
            return False
        return True

    def log_text(self) -> str:
        """Orthanc's log so far (its stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def orthanc(
    tmp_path: Path,
    *,
    modalities: Mapping[str, Modality] | None = None,
    aet: str = "ORTHANC",
    extra_config: Mapping[str, Any] | None = None,
    verbose: bool = False,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[Orthanc]:
    """Start Orthanc on free ports with its files in a new folder under tmp_path; stop it on exit.

    modalities: name -> (AET, host, port) of the DICOM peers Orthanc may push to (and accept
    associations from). extra_config overrides or adds configuration keys. verbose adds
    Orthanc's --verbose (info-level log). Ready means GET /system answered; a process that
    exits before that raises RuntimeError with the end of its log.
    """
    binary = ORTHANC if os.access(ORTHANC, os.X_OK) else shutil.which("Orthanc")
    if binary is None:
        raise FileNotFoundError(f"{ORTHANC} not found: run scripts/install-debian-packages.sh (Debian package orthanc)")
    root = Path(tempfile.mkdtemp(prefix="orthanc-", dir=tmp_path))
    dicom_port = free_port()
    http_port = free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = orthanc_config(
        root, dicom_port=dicom_port, http_port=http_port, aet=aet, modalities=modalities, extra=extra_config
    )
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log_path = root / "orthanc.log"
    args = [binary, *(["--verbose"] if verbose else []), str(config_path)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)
        try:
            server = Orthanc(
                http_url=f"http://{LOOPBACK}:{http_port}",
                dicom_port=dicom_port,
                http_port=http_port,
                aet=aet,
                root=root,
                config_path=config_path,
                log_path=log_path,
                process=process,
            )
            _wait_ready(server, startup_timeout)
            yield server
        finally:
            stop_process(process, 10.0)


def _wait_ready(server: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with code {server.process.returncode} during startup "
                f"(config {server.config_path}); end of its log:\n{_tail(server.log_path)}"
            )
        try:
            server.request("GET", "/system", timeout=1.0)
            return
        except (OSError, OrthancError) as exc:  # URLError and connection errors are OSErrors
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Orthanc's REST API ({server.http_url}/system) did not answer within {timeout:g} s "
                f"(last error: {last_error}); end of its log:\n{_tail(server.log_path)}"
            )
        time.sleep(_POLL_S)
