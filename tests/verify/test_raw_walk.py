"""The release gate's raw walk of an output collects exactly what reading it with pydicom does."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from agent.elements import Unsure, walk
from agent.verify import _codecs, _Search, search_modes
from tests.conftest import shipped
from tests.synthetic import Patient, make_ct_slice
from tests.verify.corpus import CASES, build

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "emri_small.dcm"]


def _both(outcome: object, profile: str) -> tuple[list[tuple[str, int, str, str]], list[tuple[str, int, str, str]]] | None:
    encoded = outcome.encoded  # type: ignore[attr-defined]
    result = outcome.result  # type: ignore[attr-defined]
    chosen = shipped(profile)
    out = dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    codecs = _codecs(out, ["iso8859"])
    from agent.detectors.scan import TextScanner

    raw = _Search(result, TextScanner(), *search_modes(chosen))
    try:
        raw.collect_raw(encoded, codecs)
    except Unsure:
        return None
    parsed = _Search(result, TextScanner(), *search_modes(chosen))
    parsed.collect(out, "", codecs, top=True)
    return sorted(raw.entries), sorted(parsed.entries)


@pytest.mark.parametrize("name", SAMPLES)
def test_raw_walk_matches_pydicom_on_samples(name: str, run: Callable) -> None:
    path = get_testdata_file(name)
    assert path is not None
    for profile in ("basic", "nccid"):
        outcome = run(Path(path), profile)
        if outcome.status != "passed":
            continue
        both = _both(outcome, profile)
        if both is not None:
            assert both[0] == both[1]


def test_raw_walk_matches_pydicom_on_planted_and_corpus_outputs(run: Callable) -> None:
    walked = 0
    for ds in [make_ct_slice(Patient())] + [build(case) for case in CASES]:
        outcome = run(ds, "nccid")
        if outcome.status != "passed":
            continue
        both = _both(outcome, "nccid")
        if both is not None:
            walked += 1
            assert both[0] == both[1]
    assert walked >= 20  # the fast path is the common one


def test_the_walk_leaves_what_it_does_not_handle_to_pydicom() -> None:
    with pytest.raises(Unsure):
        list(walk(b"\0" * 128 + b"NOPE"))
