"""Free TCP ports on the loopback interface, and waiting for a server to listen on one."""

from __future__ import annotations

import subprocess
import signal
import socket
import time

LOOPBACK = "127.0.0.1"
_POLL_S = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it (bind to port 0); the socket is closed before returning, so another
    process could in principle take the port before the caller's server binds it. Ports come
    from the ephemeral range in a rotating order, so an immediate reuse is rare.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once host:port accepts a TCP connection; poll every 20 ms.

    Raises TimeoutError (naming the address and the last connection error) when nothing
    listens there within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(_POLL_S, min(1.0, timeout))):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nothing accepted a TCP connection on {host}:{port} within {timeout:g} s "
                f"(last error: {last_error})"
            )
        time.sleep(_POLL_S)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a peer we started, SIGKILL it after `grace` seconds; a no-op once it has ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
