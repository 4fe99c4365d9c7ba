"""Drive DCMTK's storescu, echoscu and storescp (Debian package dcmtk) as real DICOM peers.

storescu is run with `-d` (debug logging) because only its debug log carries each response's
exact DIMSE status; `-v` prints the status as DCMTK's text only ("Refused: OutOfResources"
covers the whole 0xA7xx range). One file's exchange in the log (stderr) looks like this:

    I: Sending file: /tmp/in/ct0.dcm
    I: Converting transfer syntax: Little Endian Explicit -> Little Endian Explicit
    I: Sending Store Request (MsgID 1, CT)
    D: ===================== OUTGOING DIMSE MESSAGE ====================
    D: Message Type                  : C-STORE RQ
    D: Affected SOP Instance UID     : 1.2.826.0.1.3680043.8.498.6022...
    ...
    I: Received Store Response
    D: ===================== INCOMING DIMSE MESSAGE ====================
    D: Message Type                  : C-STORE RSP
    D: Affected SOP Instance UID     : 1.2.826.0.1.3680043.8.498.6022...
    D: DIMSE Status                  : 0xa700: Refused: Out of resources
    D: ======================= END DIMSE MESSAGE =======================

(with `-v` only, the response line is "I: Received Store Response (Success)" and no status
code follows). A file that never got a response has "E:" lines instead, e.g.

    I: Sending file: /tmp/in/mr.dcm
    E: No presentation context for: (MR) 1.2.840.10008.5.1.4.1.1.4

    I: Sending file: /tmp/in/junk
    E: Bad DICOM file: /tmp/in/junk: I/O suspension or premature end of stream

parse_store_log() turns that into one FileStatus per "Sending file" line.

Exit codes: storescu halts at the first unsuccessful store unless given `-nh`; halted on a
failure status it exits with the status's high byte (0xA700 -> 167), on other errors with 1.
With `-nh` it sends every file and exits 0 even when stores failed, so look at the statuses
(StoreResult.ok does), never at the exit code alone. storescu() passes `-nh` by default.

DCMTK tools set TCP_NODELAY on their sockets only when the environment variable TCP_NODELAY
is set; without it each small PDU waits for the peer's delayed ACK (about 40 ms an instance).
Every function here sets it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .ports import LOOPBACK, stop_process, wait_for_port

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
STORESCP = "/usr/bin/storescp"

__all__ = [
    "FileStatus",
    "StoreResult",
    "dcmtk_available",
    "dcmtk_env",
    "echoscu",
    "parse_store_log",
    "storescp",
    "storescu",
]


def dcmtk_available() -> bool:
    """True when storescu, echoscu and storescp can be run (Debian package dcmtk)."""
    return all(os.access(tool, os.X_OK) for tool in (STORESCU, ECHOSCU, STORESCP))


def dcmtk_env() -> dict[str, str]:
    """The environment for a DCMTK tool: ours plus TCP_NODELAY=1."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _require(tool: str) -> str:
    if os.access(tool, os.X_OK):
        return tool
    found = shutil.which(Path(tool).name)
    if found is None:
        raise FileNotFoundError(f"{tool} not found: run scripts/install-debian-packages.sh (Debian package dcmtk)")
    return found


# --- storescu ------------------------------------------------------------------------------


@dataclass
class FileStatus:
    """What storescu reported for one file it tried to send."""

    path: str
    # DIMSE status of the C-STORE response (from the debug log); None when no response came
    # (the file was not sent) or storescu ran without -d and the text was not "Success".
    status: int | None = None
    # DCMTK's text for the status ("Success", "Refused: Out of resources", ...).
    status_text: str | None = None
    # Affected SOP Instance UID of the request (and, once it came, of the response).
    sop_instance_uid: str | None = None
    # "E:" lines logged while handling this file (why it was not sent, or what failed).
    errors: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status == 0x0000

    @property
    def warning(self) -> bool:
        """A warning status (0x0001, 0xB000-0xBFFF): stored, with a caveat."""
        return self.status is not None and (self.status == 0x0001 or 0xB000 <= self.status <= 0xBFFF)


@dataclass
class StoreResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    files: list[FileStatus]

    @property
    def statuses(self) -> list[int | None]:
        """The DIMSE status of each file storescu tried to send, in order (None: no response)."""
        return [f.status for f in self.files]

    @property
    def ok(self) -> bool:
        """storescu exited 0, tried at least one file, and every one got status Success."""
        return self.returncode == 0 and bool(self.files) and all(f.success for f in self.files)

    def describe(self) -> str:
        """The command, exit code, per-file statuses and the log's non-debug lines (for assertion messages)."""
        lines = [f"$ {' '.join(self.args)}", f"exit code {self.returncode}"]
        for f in self.files:
            status = "no response" if f.status is None else f"0x{f.status:04X}"
            lines.append(f"  {status} {f.status_text or ''} {f.path} {' | '.join(f.errors)}".rstrip())
        lines += [line for line in self.stderr.splitlines() if not line.startswith("D: ")]
        return "\n".join(lines)


_SENDING = re.compile(r"^I: Sending file: (?P<path>.*)$")
_RESPONSE = re.compile(r"^I: Received Store Response(?: \((?P<text>.*)\))?$")
_STATUS = re.compile(r"^D: DIMSE Status\s*: 0x(?P<code>[0-9a-fA-F]{1,4})(?:: (?P<text>.*))?$")
_SOP_UID = re.compile(r"^D: Affected SOP Instance UID\s*: (?P<uid>[0-9.]+)\s*$")
_ERROR = re.compile(r"^[EF]: (?P<message>.*)$")


def parse_store_log(log: str) -> list[FileStatus]:
    """Per-file results from storescu's log (stderr) at -v or -d; see the module docstring."""
    files: list[FileStatus] = []
    current: FileStatus | None = None
    for line in log.splitlines():
        if m := _SENDING.match(line):
            current = FileStatus(path=m["path"])
            files.append(current)
        elif current is None:
            continue
        elif m := _RESPONSE.match(line):
            if m["text"] is not None:
                current.status_text = m["text"]
                if m["text"] == "Success":
                    current.status = 0x0000
        elif m := _STATUS.match(line):
            current.status = int(m["code"], 16)
            current.status_text = m["text"]
        elif m := _SOP_UID.match(line):
            current.sop_instance_uid = m["uid"]
        elif m := _ERROR.match(line):
            current.errors.append(m["message"])
    return files


def storescu(
    host: str,
    port: int,
    files: Sequence[Path | str] | Path | str,
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "NMIP_AGENT",
    propose: str | None = None,
    halt: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 120,
) -> StoreResult:
    """Send `files` (a file, a folder, or a list of either) to host:port in one association.

    Command line: storescu -d -aet CALLING -aec CALLED -ta 30 -nh [+sd +r] [PROPOSE] [EXTRA...]
    HOST PORT FILE...; `+sd +r` (scan folders, recursively) only when a folder is given.

    propose: a storescu transfer-syntax proposal option ("-xe", "-xi", "-xs", "-xv", "-xd",
    ...). None keeps storescu's default: the uncompressed syntaxes (explicit VR, local byte
    order first) plus, for each compressed input file, that file's own syntax; storescu
    proposes every storage SOP class it knows (up to 128 presentation contexts), as a PACS
    typically does. Add "-R" to extra_args to propose only the input files' SOP classes.

    halt: stop at the first unsuccessful store (storescu's default). Off by default here so
    every file gets a status; note that storescu then exits 0 whatever the statuses were.

    Never raises for a failed transfer (only for a timeout): look at the result.
    """
    paths = [files] if isinstance(files, (str, Path)) else list(files)
    if not paths:
        raise ValueError("storescu: no files given")
    if propose is not None and not re.fullmatch(r"[-+]x\S*", propose):
        raise ValueError(f"storescu: propose must be a transfer-syntax option like -xs, not {propose!r}")
    args = [_require(STORESCU), "-d", "-aet", calling_ae, "-aec", called_ae, "-ta", "30"]
    if not halt:
        args.append("-nh")
    if any(Path(p).is_dir() for p in paths):
        args += ["+sd", "+r"]
    if propose is not None:
        args.append(propose)
    args += list(extra_args)
    args += [host, str(port)] + [os.fspath(p) for p in paths]
    proc = subprocess.run(
        args, capture_output=True, text=True, errors="replace", env=dcmtk_env(), timeout=timeout, stdin=subprocess.DEVNULL
    )
    return StoreResult(
        args=args,
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        files=parse_store_log(proc.stderr),
    )


# --- echoscu -------------------------------------------------------------------------------


def echoscu(
    host: str,
    port: int,
    *,
    calling_ae: str = "ECHOSCU",
    called_ae: str = "NMIP_AGENT",
    extra_args: Sequence[str] = (),
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO to host:port (echoscu -v -aet CALLING -aec CALLED -ta 30 HOST PORT).

    Exit code 0 means the association was accepted and the echo answered Success; the log
    (stderr) then has "I: Received Echo Response (Success)".
    """
    args = [_require(ECHOSCU), "-v", "-aet", calling_ae, "-aec", called_ae, "-ta", "30", *extra_args, host, str(port)]
    return subprocess.run(
        args, capture_output=True, text=True, errors="replace", env=dcmtk_env(), timeout=timeout, stdin=subprocess.DEVNULL
    )


# --- storescp ------------------------------------------------------------------------------


@dataclass
class StoreSCP:
    port: int
    out_dir: Path
    ae: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def received(self) -> list[Path]:
        """Files written so far (storescp names them <modality>.<SOP Instance UID>.dcm)."""
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())


@contextmanager
def storescp(
    port: int,
    out_dir: Path | str,
    *,
    ae: str = "STORESCP",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 10.0,
) -> Iterator[StoreSCP]:
    """DCMTK's storescp listening on `port`, writing what it receives into out_dir.

    Command line: storescp -v -aet AE -od OUT_DIR +xa -dhl -fe .dcm [EXTRA...] PORT, i.e. it
    accepts every transfer syntax it knows (so any input is a fair comparison) and does no
    reverse DNS lookup of callers. storescp has no bind-address option: it listens on all
    interfaces, as every test server here does on a port that only this machine uses.
    Its log goes to out_dir/../storescp-PORT.log. On exit it is terminated (SIGTERM, then
    SIGKILL after 5 s).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"storescp-{port}.log"
    args = [_require(STORESCP), "-v", "-aet", ae, "-od", str(out), "+xa", "-dhl", "-fe", ".dcm", *extra_args, str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env(), stdin=subprocess.DEVNULL)
        try:
            try:
                _wait_listening(process, port, startup_timeout)
            except (TimeoutError, RuntimeError) as exc:
                raise RuntimeError(f"{exc}\n--- {log_path}:\n{log_path.read_text(errors='replace')}") from None
            yield StoreSCP(port=port, out_dir=out, ae=ae, process=process, log_path=log_path)
        finally:
            stop_process(process, 5.0)


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """wait_for_port, but fail at once if the process exits first (e.g. the port was taken)."""
    step = 0.5
    remaining = timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{STORESCP} exited with code {process.returncode} before listening on port {port}")
        try:
            wait_for_port(LOOPBACK, port, timeout=min(step, remaining))
            return
        except TimeoutError:
            remaining -= step
            if remaining <= 0:
                raise
