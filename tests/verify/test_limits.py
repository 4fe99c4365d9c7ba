"""Hostile input is bounded: each instance ends in bounded memory and time with its own reason.

Each case runs in a child process whose address space is capped, as a worker's is, so a case
that escaped its limits would fail here instead of taking the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.limits import Limits
from tests.conftest import REPO, encode
from tests.hostile import huge_declared_length as _huge_declared_length
from tests.hostile import huge_value as _huge_value
from tests.hostile import many_values as _many_values
from tests.hostile import nested as _nested
from tests.hostile import quietly as _quietly
from tests.synthetic import Patient, make_ct_slice


def _run(data: bytes, tmp_path: Path, limits: Limits = Limits(), deadline: float = 60) -> dict[str, object]:
    """Process `data` in a child under the limits' address-space cap and a deadline (seconds)."""
    source = tmp_path / "in.dcm"
    source.write_bytes(data)
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from agent.deidentify import load_profile
        from agent.errors import UnreadableInput
        from agent.keys import SiteKey
        from agent.limits import Limits, bound_worker_memory
        from agent.process import InstanceProcessor
        limits = Limits(**{limits.__dict__!r})
        bound_worker_memory(limits)
        processor = InstanceProcessor(load_profile("nccid"), SiteKey(bytes(range(32))), limits=limits)
        started = time.monotonic()
        try:
            outcome = processor.process(open({str(source)!r}, "rb").read(), "case")
            verdict = {{"status": outcome.status, "reason": outcome.refusal.reason.value if outcome.refusal else "",
                       "detail": outcome.refusal.detail if outcome.refusal else ""}}
        except UnreadableInput:
            verdict = {{"status": "unreadable", "reason": "", "detail": ""}}
        verdict["seconds"] = time.monotonic() - started
        verdict["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps(verdict))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=deadline)
    assert run.returncode == 0, run.stderr[-2000:]
    verdict: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return verdict


@pytest.mark.parametrize("depth", [40, 10_000])
def test_deep_nesting_is_refused_in_bounded_time(depth: int, tmp_path: Path) -> None:
    """Sequences nested beyond max_depth: refused (resource_limit) or unreadable, never a crash."""
    verdict = _run(_nested(depth), tmp_path, Limits(worker_memory_mb=1536))
    assert verdict["status"] in ("quarantined", "unreadable"), verdict
    if verdict["status"] == "quarantined":
        assert verdict["reason"] == "resource_limit" and str(verdict["detail"]).startswith("max_depth"), verdict
    assert float(verdict["seconds"]) < 20  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "limit"), [(_huge_value, "max_value_bytes"), (_many_values, "max_elements")])
def test_oversized_values_are_refused_before_the_work(make: object, limit: str, tmp_path: Path) -> None:
    """A 10 MB descriptor or 500,000 values in one element: resource_limit naming the limit, in seconds."""
    verdict = _run(make(), tmp_path, Limits(worker_memory_mb=1536))  # type: ignore[operator]
    assert verdict["status"] == "quarantined" and verdict["reason"] == "resource_limit", verdict
    assert str(verdict["detail"]).startswith(limit)
    assert float(verdict["seconds"]) < 5 and int(verdict["peak_mb"]) < 1000  # type: ignore[arg-type]


def test_a_huge_declared_length_ends_bounded(tmp_path: Path) -> None:
    """A value declaring 2 GiB in a 0.5 MB file: unreadable or refused, in bounded memory."""
    verdict = _run(_huge_declared_length(), tmp_path, Limits(worker_memory_mb=1536))
    assert verdict["status"] in ("quarantined", "unreadable"), verdict
    assert int(verdict["peak_mb"]) < 1000  # type: ignore[arg-type]


def test_an_instance_over_its_time_is_refused(tmp_path: Path) -> None:
    """instance_seconds stops a slow instance with resource_limit; the worker lives on."""
    verdict = _run(encode(make_ct_slice(Patient())), tmp_path, Limits(instance_seconds=0.001))
    assert verdict["status"] == "quarantined" and verdict["reason"] == "resource_limit", verdict
    assert str(verdict["detail"]).startswith("instance_seconds")


def test_an_instance_over_the_worker_memory_is_refused(tmp_path: Path) -> None:
    """With the value limits lifted, a 12 MB descriptor runs into worker_memory_mb: resource_limit, no crash."""
    data = _quietly(lambda ds: setattr(ds, "StudyDescription", "CT " * (4 << 20)))
    # Close to the cap, every small allocation first tries an arena mmap that fails, then falls back
    # to brk: the last few megabytes can take a minute to exhaust (seen: 12 s or 57 s, run to run).
    # A worker is bounded by instance_seconds (120 s by default) as well; so is this run.
    limits = Limits(max_value_bytes=1 << 30, worker_memory_mb=520)
    verdict = _run(data, tmp_path, limits, deadline=limits.instance_seconds + 30)
    assert verdict["status"] == "quarantined" and verdict["reason"] == "resource_limit", verdict
    assert str(verdict["detail"]).startswith("worker_memory_mb")
