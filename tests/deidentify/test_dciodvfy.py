"""De-identified objects stay valid: dciodvfy reports no error on an output that it did not on its input."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from pydicom.data import get_testdata_file

from tests.synthetic import Patient, make_ct_slice, make_study, write
from tests.tools.dciodvfy import dciodvfy_available, dciodvfy_errors, dciodvfy_output

pytestmark = pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (Debian dicom3tools) is installed by make test")


def _sample(name: str) -> Path:
    if name.startswith("data_store/"):
        import data_store

        return Path(data_store.__file__).parent / "data" / name.removeprefix("data_store/")
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


PUBLIC = [
    ("CT_small.dcm", "nccid"), ("CT_small.dcm", "basic"), ("MR_small.dcm", "nccid"), ("MR_small_implicit.dcm", "basic"),
    ("rtplan.dcm", "basic"), ("rtstruct.dcm", "basic"), ("rtdose.dcm", "basic"), ("liver_1frame.dcm", "basic"),
    ("waveform_ecg.dcm", "basic"), ("examples_overlay.dcm", "nccid"), ("rtdose_rle.dcm", "basic"),
    ("data_store/eCT_Supplemental.dcm", "nccid"), ("MR_small_jp2klossless.dcm", "nccid"),
    ("data_store/RG3_J2KR.dcm", "nccid"),
]  # fmt: skip


def _new_errors(source: Path, run: Callable, profile: str, tmp_path: Path) -> set[str]:
    outcome = run(source, profile)
    assert outcome.status == "passed", outcome.refusal
    out = tmp_path / "out.dcm"
    out.write_bytes(outcome.encoded)
    new = dciodvfy_errors(out) - dciodvfy_errors(source)
    if new:
        print(dciodvfy_output(out))
    return new


@pytest.mark.parametrize(("name", "profile"), PUBLIC)
def test_public_samples_gain_no_error(name: str, profile: str, run: Callable, tmp_path: Path) -> None:
    """Public sample objects of many IODs gain no dciodvfy error under basic or nccid."""
    assert _new_errors(_sample(name), run, profile, tmp_path) == set()


@pytest.mark.parametrize("profile", ["basic", "nccid"])
def test_synthetic_study_gains_no_error(profile: str, run: Callable, tmp_path: Path) -> None:
    """A planted synthetic CT study stays valid under both shipped profiles."""
    for index, ds in enumerate(make_study(Patient(), n_series=1, n_per_series=2)):
        source = write(ds, tmp_path / f"in{index}.dcm")
        assert _new_errors(source, run, profile, tmp_path) == set()


def test_free_text_corpus_gains_no_error(run: Callable, tmp_path: Path) -> None:
    """The free-text corpus, cleaned under nccid (sequences emptied or dummied, names dummied, text
    removed or reduced to vocabulary), stays as valid as it came."""
    from tests.verify.corpus import CASES, build

    new: dict[str, set[str]] = {}
    for case in CASES:
        source = write(build(case), tmp_path / f"{case.name}.dcm")
        outcome = run(source, "nccid")
        if outcome.status != "passed":
            continue
        out = tmp_path / f"{case.name}.out.dcm"
        out.write_bytes(outcome.encoded)
        errors = dciodvfy_errors(out) - dciodvfy_errors(source)
        if errors:
            new[case.name] = errors
    assert new == {}
