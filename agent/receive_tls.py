"""DICOM over TLS for the receiver (`receive.tls`): the server's SSLContext and each connection's handshake.

TLS 1.2 or later, and a client certificate signed by `receive.tls.ca_bundle` is required: a peer
without one is refused by the handshake, before a byte of DICOM is read; the allow-list of (AE
title, address) still applies after it. The handshake runs in the connection's own thread with a
deadline (never in the acceptor: one client that connects and says nothing would hold every
other PACS). An SSLContext cannot be pickled, so each receiver process builds its own from the
configuration; `serve` and `config check` build one first, to refuse a bad file before starting.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from agent.config import ConfigError, ReceiveTlsConfig, check_private, load_ca_bundle

#: OpenSSL's reason for a failed handshake -> what the log says (never a field of the peer's certificate).
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "UNSUPPORTED_PROTOCOL": "a TLS version below 1.2",
    "WRONG_VERSION_NUMBER": "not TLS (a plain DICOM connection?)",
    "HTTP_REQUEST": "not TLS",
    "NO_SHARED_CIPHER": "no cipher in common",
}


def server_context(tls: ReceiveTlsConfig, source: Path) -> ssl.SSLContext:
    """TLS 1.2+, presenting receive.tls.certificate, requiring a client certificate from receive.tls.ca_bundle."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client may not make the server redo the costly part
    load_ca_bundle(context, source, "receive.tls.ca_bundle", tls.ca_bundle)
    check_private(source, "receive.tls.key", tls.key)
    for key, path in (("certificate", tls.certificate), ("key", tls.key)):
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"{source}: receive.tls.{key}: {path}: cannot read ({exc.strerror})") from None
    try:
        # An encrypted key gets an empty passphrase (and fails) rather than a terminal prompt.
        context.load_cert_chain(str(tls.certificate), str(tls.key), password=lambda: b"")
    except (OSError, ssl.SSLError):
        raise ConfigError(f"{source}: receive.tls.key: {tls.key} and receive.tls.certificate {tls.certificate} are "
                          "not a matching PEM certificate and unencrypted key") from None
    return context


def handshake(sock: ssl.SSLSocket, timeout_s: float) -> str | None:
    """Complete the server side of the handshake within `timeout_s`: None, or why the peer is
    refused (OpenSSL's reason, never a field of its certificate)."""
    try:
        sock.settimeout(timeout_s)  # do_handshake holds one deadline for the whole exchange
        sock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        return f"TLS handshake failed: client certificate refused ({exc.verify_message})"
    except ssl.SSLError as exc:
        reason = str(exc.reason or type(exc).__name__)
        return f"TLS handshake failed: {_REASONS.get(reason, reason)}"
    except TimeoutError:
        return f"TLS handshake not completed within {timeout_s:g} s"
    except OSError:
        return "TLS handshake failed: the peer closed the connection"
    return None
