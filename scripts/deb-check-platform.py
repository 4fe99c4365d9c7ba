"""The central platform for scripts/deb-check.sh: the test suite's own (tests/peers/platform.py),
nginx with TLS, client certificates and a bearer token in front of Orthanc's DICOMweb, so the
installed package delivers to the same real platform the tests do.

    .venv/bin/python scripts/deb-check-platform.py WORKDIR

Runs on the host (the chroot shares its network). Once serving, writes WORKDIR/platform.json
(URLs; paths of the CA bundle, the site's client certificate and key, the token file) and prints
`platform: listening on URL`; then, whenever what it holds changes, one line:

    platform: holds N instance(s) of M study(ies); K manifest(s); identifiers: none

"identifiers" lists any value of the samples' (scripts/deb-check-samples.py: DEBCHECK..., ACC...)
found in a stored instance's tags or a manifest: the check fails on anything but "none".
Stops on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.peers.platform import Platform, platform  # noqa: E402 (after the path above)

#: The samples' patient names and IDs (DEBCHECK^Q1, DEBCHECKQ1, ...) and accession numbers, whole.
SAMPLE_MARKERS = ("DEBCHECK", "ACCQ1", "ACCQ2", "ACCQ3", "ACCQ4", "ACCBURNED", "ACCSC")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _holdings(central: Platform) -> str:
    stored = central.stored_instances()
    studies = {str(instance.tags.get("StudyInstanceUID")) for instance in stored.values()}
    manifests = central.put_files("manifests")
    texts = [json.dumps(instance.tags) for instance in stored.values()]
    texts += [content.decode("utf-8", "replace") for content in manifests.values()]
    found = sorted({marker for marker in SAMPLE_MARKERS for text in texts if marker in text})
    return (f"holds {len(stored)} instance(s) of {len(studies)} study(ies); {len(manifests)} manifest(s); "
            f"identifiers: {', '.join(found) or 'none'}")


def main() -> None:
    workdir = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, _stop)
    with platform(workdir) as central:
        (workdir / "platform.json").write_text(json.dumps({
            "dicomweb_url": central.dicomweb_url,
            "manifest_url": central.manifest_url,
            "ca_bundle": str(central.ca_bundle),
            "client_certificate": str(central.client_certificate),
            "client_key": str(central.client_key),
            "token_file": str(central.token_file),
        }))
        print(f"platform: listening on {central.base_url}", flush=True)
        last = ""
        while True:
            now = _holdings(central)
            if now != last:
                print(f"platform: {now}", flush=True)
                last = now
            time.sleep(0.5)


if __name__ == "__main__":
    main()
