"""`nmip-agent check`: a dry run that shows, per attribute, what would leave, and the gate's verdict."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.cli.helpers import Run, deid_sample, make_key, nmip, sample
from tests.synthetic import Patient, make_ct_slice, planted_values, write

PATIENT_NAME = "(0010,0010)"
PATIENT_ID = "(0010,0020)"
OUTPUT_PATH = re.compile(r"^[0-9A-Z]{12}/2\.25\.\d+/2\.25\.\d+/2\.25\.\d+\.dcm$")
MR_VARIANTS = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]
# What nccid keeps on purpose: its Retain Device Identity option keeps Station Name and Device
# Serial Number (PS3.15 Table E.1-1), so these planted values are expected in its outputs.
RETAINED_BY_NCCID = {"site.station_name", "site.device_serial"}


def _encapsulated_pdf(patient: Patient) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = f"%PDF-1.4 report for {patient.name} {patient.patient_id}\n".encode()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files checked in this module, by short name: public samples and synthetic slices."""
    folder = tmp_path_factory.mktemp("inputs")
    patient = Patient()
    files = {name: sample(name) for name in ("CT_small.dcm", "examples_palette.dcm", "rtplan.dcm", "test-SR.dcm",
                                             "DICOMDIR", *MR_VARIANTS)}
    files["image1.dcm"] = deid_sample("dicom-cookies/image1.dcm")
    files["ctbrain1.dcm"] = deid_sample("humans/ctbrain1.dcm")
    files["synthetic.dcm"] = write(make_ct_slice(patient), folder / "synthetic.dcm")
    burned = make_ct_slice(patient)
    burned.BurnedInAnnotation = "YES"
    files["burned.dcm"] = write(burned, folder / "burned.dcm")
    screen = make_ct_slice(patient)
    screen.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    files["screen.dcm"] = write(screen, folder / "screen.dcm")
    files["document.dcm"] = write(_encapsulated_pdf(patient), folder / "document.dcm")
    files["notes.txt"] = folder / "notes.txt"
    files["notes.txt"].write_text("Patient PLANTEDSURNAME, not a DICOM file\n")
    files["missing.dcm"] = folder / "missing.dcm"
    return files


@pytest.fixture(scope="module")
def cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The (empty) working folder of every `check` run in this module."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def check(inputs: dict[str, Path], cwd: Path, key_file: Path) -> Callable[..., Run]:
    """`check NAMES... --profile P --key-file K [--json]`; each distinct invocation runs once per module."""
    done: dict[tuple[str, ...], Run] = {}

    def run(*names: str, profile: str = "nccid", as_json: bool = True, key: Path | None = None,
            extra: tuple[str, ...] = ()) -> Run:
        args = ("check", *(str(inputs[n]) for n in names), "--profile", profile, "--key-file", str(key or key_file),
                *(("--json",) if as_json else ()), *extra)
        if args not in done:
            done[args] = nmip(*args, cwd=cwd)
        return done[args]

    return run


# One run over every kind of input: each test below reads its file's report.
EVERYTHING = ("CT_small.dcm", "synthetic.dcm", "document.dcm", "burned.dcm", "screen.dcm", "examples_palette.dcm",
              "image1.dcm", "ctbrain1.dcm", "rtplan.dcm", "test-SR.dcm", "DICOMDIR", "notes.txt", "missing.dcm")


@pytest.fixture(scope="module")
def reports(check: Callable[..., Run], inputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """check --json --profile nccid over EVERYTHING, the report of each file by short name."""
    run = check(*EVERYTHING)
    by_path = {report["file"]: report for report in run.json()["files"]}
    assert len(by_path) == len(EVERYTHING), "one report per file"
    return {name: by_path[str(inputs[name])] for name in EVERYTHING}


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["attribute"]: row for row in report["attributes"]}


def _only(run: Run) -> dict[str, Any]:
    files = run.json()["files"]
    assert len(files) == 1, files
    return files[0]


# --- a file that passes ---------------------------------------------------------------------


def test_table_shows_attributes_and_each_verdict(check: Callable[..., Run]) -> None:
    """Without --json, a table per file names PatientName with its Before value, then PASS, QUARANTINE or UNREADABLE."""
    run = check("CT_small.dcm", "burned.dcm", "examples_palette.dcm", "notes.txt", as_json=False)
    for column in ("Attribute", "Action", "Before", "After"):
        assert column in run.stdout
    assert "PatientName" in run.stdout
    assert "CompressedSamples^CT1" in run.stdout
    assert re.search(r"PASS: would be released as\s+[0-9A-Z]{12}/2\.25\.", run.stdout)
    assert "QUARANTINE (burned_in_annotation)" in run.stdout
    assert "EXCLUDED (out_of_scope)" in run.stdout
    assert re.search(r"UNREADABLE: .*notes\.txt: not a readable DICOM file", run.stdout)


def test_json_has_per_attribute_rows_and_the_verdict(check: Callable[..., Run], key_id: str) -> None:
    """--json gives the profile, the key id, and per file a verdict, an output path and before/after rows."""
    run = check("CT_small.dcm")
    assert run.returncode == 0, run.output
    payload = run.json()
    assert payload["profile"] == "nccid"
    assert payload["key_id"] == key_id
    report = _only(run)
    assert report["file"] == str(sample("CT_small.dcm"))
    assert report["verdict"] == "pass"
    assert OUTPUT_PATH.match(report["output"]), report["output"]
    assert report["attributes"], "no per-attribute rows"
    for row in report["attributes"]:
        assert set(row) >= {"attribute", "keyword", "action", "before", "after"}, row
    name = _rows(report)[PATIENT_NAME]
    assert name["keyword"] == "PatientName"
    assert name["before"] == "CompressedSamples^CT1"
    assert name["after"] not in (None, "", name["before"])


def test_nccid_patient_name_is_the_patient_pseudonym(check: Callable[..., Run]) -> None:
    """Under nccid PatientName's after value is PatientID's as a family name: the pseudonym that names the output folder."""
    report = _only(check("CT_small.dcm"))
    rows = _rows(report)
    pseudonym = rows[PATIENT_ID]["after"]
    assert rows[PATIENT_ID]["before"] == "1CT1"
    assert re.fullmatch(r"[0-9A-Z]{12}", pseudonym)
    assert rows[PATIENT_NAME]["after"] == pseudonym + "^"
    assert report["output"].split("/")[0] == pseudonym


def test_basic_profile_blanks_patient_name(check: Callable[..., Run]) -> None:
    """--profile basic passes CT_small and the JSON shows (0010,0010) blanked and PatientID replaced."""
    run = check("CT_small.dcm", profile="basic")
    assert run.returncode == 0, run.output
    assert run.json()["profile"] == "basic"
    report = _only(run)
    assert report["verdict"] == "pass"
    rows = _rows(report)
    assert rows[PATIENT_NAME]["action"].startswith("blank")
    assert rows[PATIENT_NAME]["before"] == "CompressedSamples^CT1"
    assert rows[PATIENT_NAME]["after"] == ""
    assert rows[PATIENT_ID]["after"] not in (None, "1CT1")


def test_same_file_checked_twice_gets_the_same_pseudonym(check: Callable[..., Run]) -> None:
    """A second, separate run with the same key gives the same pseudonym and output path (stable)."""
    first = _only(check("CT_small.dcm"))
    again = _only(check("CT_small.dcm", extra=("--changed-only",)))
    assert _rows(again)[PATIENT_ID]["after"] == _rows(first)[PATIENT_ID]["after"]
    assert again["output"] == first["output"]


def test_changed_only_hides_kept_attributes(check: Callable[..., Run]) -> None:
    """--changed-only lists only attributes whose value changes (PatientName stays, Modality goes)."""
    report = _only(check("CT_small.dcm", extra=("--changed-only",)))
    rows = _rows(report)
    assert PATIENT_NAME in rows and "(0008,0060)" not in rows
    assert all(row["after"] != row["before"] for row in report["attributes"])


def test_a_different_key_gives_a_different_pseudonym(check: Callable[..., Run], key_id: str, tmp_path: Path) -> None:
    """Another site key gives another pseudonym and other UIDs, and the JSON reports its own key id."""
    other = make_key(tmp_path)
    first = _only(check("CT_small.dcm"))
    run = check("CT_small.dcm", key=other)
    assert run.json()["key_id"] != key_id
    second = _only(run)
    assert second["verdict"] == "pass"
    assert _rows(second)[PATIENT_ID]["after"] != _rows(first)[PATIENT_ID]["after"]
    assert set(second["output"].split("/")).isdisjoint(first["output"].split("/"))


def test_check_writes_nothing(check: Callable[..., Run], cwd: Path, inputs: dict[str, Path]) -> None:
    """A dry run leaves its working folder empty and the checked files byte for byte as they were."""
    names = ("synthetic.dcm", "burned.dcm", "document.dcm")
    digests = {n: hashlib.sha256(inputs[n].read_bytes()).hexdigest() for n in names}
    check(*names)  # runs in `cwd`, like every other check of this module
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in inputs["synthetic.dcm"].parent.iterdir()) == sorted(
        ["synthetic.dcm", "burned.dcm", "screen.dcm", "document.dcm", "notes.txt"])
    assert {n: hashlib.sha256(inputs[n].read_bytes()).hexdigest() for n in names} == digests


def test_after_values_hold_no_planted_identifier(reports: dict[str, dict[str, Any]], inputs: dict[str, Path]) -> None:
    """On a slice with identifiers planted everywhere, no After value holds one (but what nccid retains on purpose)."""
    planted = planted_values(Patient(), dcmread(inputs["synthetic.dcm"]))
    report = reports["synthetic.dcm"]
    assert report["verdict"] == "pass", report.get("detail")
    for row in report["attributes"]:
        after = (row["after"] or "").lower()
        leaked = [label for label, value in planted.items() if value.lower() in after and label not in RETAINED_BY_NCCID]
        assert not leaked, (row["attribute"], row["action"], leaked)


def test_each_attribute_is_reported_once(reports: dict[str, dict[str, Any]]) -> None:
    """Every attribute has exactly one row, so the dry run shows one fate per attribute."""
    paths = [row["attribute"] for row in reports["synthetic.dcm"]["attributes"]]
    assert sorted(p for p in set(paths) if paths.count(p) > 1) == []


# --- files the gate refuses -----------------------------------------------------------------


GATE_CASES = {
    "burned.dcm": "burned_in_annotation",
}
#: Outside nccid's scope: excluded (not sent, not quarantined).
EXCLUDED_CASES = {
    "examples_palette.dcm": "out_of_scope",  # ultrasound
    "image1.dcm": "out_of_scope",  # secondary capture
    "ctbrain1.dcm": "out_of_scope",  # secondary capture
    "screen.dcm": "excluded_by_rule",  # CT whose Image Type says SCREEN SAVE (a GE dose screen)
    "document.dcm": "out_of_scope",
    "rtplan.dcm": "out_of_scope",
    "test-SR.dcm": "out_of_scope",
}
#: Under `basic` (every storage class but documents, no exclusion rule) the same files are in
#: scope, and the gate refuses what it cannot make safe.
BASIC_GATE_CASES = {
    "examples_palette.dcm": "burned_in_risk",
    "image1.dcm": "burned_in_risk",
    "ctbrain1.dcm": "burned_in_risk",
    "screen.dcm": "burned_in_risk",
    "burned.dcm": "burned_in_annotation",
}


@pytest.mark.parametrize("name", list(GATE_CASES))
def test_gate_refuses_with_a_machine_readable_reason(reports: dict[str, dict[str, Any]], name: str) -> None:
    """Burned-in text is refused with its reason code."""
    report = reports[name]
    assert report["verdict"] == "quarantine", report
    assert report["reason"] == GATE_CASES[name]
    assert report["detail"]
    assert "output" not in report


@pytest.mark.parametrize("name", list(EXCLUDED_CASES))
def test_out_of_scope_is_excluded_with_a_machine_readable_reason(reports: dict[str, dict[str, Any]], name: str) -> None:
    """Screen captures, dose screens, documents and SOP classes nccid does not list are excluded, with their reason."""
    report = reports[name]
    assert report["verdict"] == "excluded", report
    assert report["reason"] == EXCLUDED_CASES[name]
    assert report["detail"]
    assert "output" not in report


def test_in_scope_burned_in_risk_is_refused(check: Callable[..., Run]) -> None:
    """A profile that takes ultrasound and screen captures still refuses them while no pixel rule masks them."""
    names = list(BASIC_GATE_CASES)
    run = check(*names, profile="basic")
    assert run.returncode == 1
    for name, report in zip(names, run.json()["files"]):
        assert (report["verdict"], report["reason"]) == ("quarantine", BASIC_GATE_CASES[name]), name


def test_refusal_detail_names_no_identifier(reports: dict[str, dict[str, Any]], inputs: dict[str, Path]) -> None:
    """The reason detail of a refused synthetic slice holds none of its planted values."""
    for name in ("burned.dcm", "screen.dcm", "document.dcm"):
        detail = reports[name]["detail"].lower()
        planted = planted_values(Patient(), dcmread(inputs[name]))
        assert not [label for label, value in planted.items() if value.lower() in detail], name


def test_mix_of_passing_and_quarantined_files_reports_each(check: Callable[..., Run]) -> None:
    """Checking a passing file and a refused one gives one report per file, in order."""
    reports = check("CT_small.dcm", "burned.dcm", "examples_palette.dcm").json()["files"]
    assert [r["verdict"] for r in reports] == ["pass", "quarantine", "excluded"]
    assert [r["file"] for r in reports][::2] == [str(sample("CT_small.dcm")), str(sample("examples_palette.dcm"))]


# --- unreadable input and usage errors ------------------------------------------------------


def test_text_file_is_not_a_readable_dicom_file(check: Callable[..., Run], inputs: dict[str, Path]) -> None:
    """A text file is reported by path as 'not a readable DICOM file'."""
    report = _only(check("notes.txt"))
    assert report["verdict"] == "unreadable"
    assert report["file"] == str(inputs["notes.txt"])
    assert "not a readable DICOM file" in report["detail"]


def test_missing_file_is_reported_unreadable(reports: dict[str, dict[str, Any]]) -> None:
    """A path that does not exist is reported as unreadable."""
    assert reports["missing.dcm"]["verdict"] == "unreadable"
    assert "cannot read" in reports["missing.dcm"]["detail"]


def test_dicomdir_is_skipped(reports: dict[str, dict[str, Any]]) -> None:
    """A DICOMDIR is not de-identified: its verdict is skipped, and says why."""
    assert reports["DICOMDIR"]["verdict"] == "skipped"
    assert "DICOMDIR" in reports["DICOMDIR"]["detail"]


def test_unknown_profile_exits_2_naming_the_shipped_profiles(check: Callable[..., Run]) -> None:
    """--profile with an unknown name exits 2, names it, and lists the shipped profiles."""
    run = check("CT_small.dcm", profile="no-such-profile")
    assert run.returncode == 2
    assert "no-such-profile" in run.stderr
    assert "basic" in run.stderr and "nccid" in run.stderr
    assert run.stdout == ""


EXIT_CASES = {
    # case: (files, expected exit code)
    "pass": (("CT_small.dcm",), 0),
    "pass, six transfer syntaxes": (tuple(MR_VARIANTS), 0),
    "ultrasound, out of scope": (("examples_palette.dcm",), 0),
    "burned-in text": (("burned.dcm",), 1),
    "pass and quarantine": (("CT_small.dcm", "burned.dcm"), 1),
    "text file": (("notes.txt",), 2),
    "every kind of input": (EVERYTHING, 2),
}


@pytest.mark.parametrize(
    "case", list(EXIT_CASES)
)
def test_exit_code(check: Callable[..., Run], case: str) -> None:
    """check --json exits 0 when every file would pass or be excluded, 1 when any would be quarantined, 2 on unreadable input."""
    names, expected = EXIT_CASES[case]
    run = check(*names)
    assert len(run.json()["files"]) == len(names)
    assert run.returncode == expected


def test_missing_argument_is_a_usage_error(cwd: Path, key_file: Path) -> None:
    """check without a file exits 2 with a usage message, not a traceback."""
    run = nmip("check", "--profile", "nccid", "--key-file", key_file, cwd=cwd)
    assert "Traceback" not in run.stderr
    assert run.returncode == 2


# --- transfer syntaxes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_reports(check: Callable[..., Run]) -> dict[str, dict[str, Any]]:
    """check --json --profile nccid of every transfer syntax variant of MR_small, by file name."""
    return {Path(r["file"]).name: r for r in check(*MR_VARIANTS).json()["files"]}


# Rows that legitimately differ between encodings: the pixel data's bytes, and the trailing
# padding only the explicit little endian file has (it is removed).
_ENCODING_ROWS = {"(7FE0,0010)", "(FFFC,FFFC)"}


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_transfer_syntax_does_not_change_deidentification(mr_reports: dict[str, dict[str, Any]], name: str) -> None:
    """Every MR_small variant passes with the same pseudonym, output path and de-identified header values."""
    report, reference = mr_reports[name], mr_reports["MR_small.dcm"]
    assert report["verdict"] == "pass", report.get("detail")
    pseudonym = _rows(reference)[PATIENT_ID]["after"]
    assert _rows(report)[PATIENT_ID]["after"] == pseudonym
    assert _rows(report)[PATIENT_NAME]["after"] == pseudonym + "^"
    assert report["output"] == reference["output"]
    assert OUTPUT_PATH.match(report["output"])
    header = {k: r["after"] for k, r in _rows(report).items() if k not in _ENCODING_ROWS}
    expected = {k: r["after"] for k, r in _rows(reference).items() if k not in _ENCODING_ROWS}
    assert header == expected
