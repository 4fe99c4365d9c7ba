"""`nmip-agent anonymise`: a hospital export folder in, pseudonymous files, quarantine and crosswalk out."""

from __future__ import annotations

import csv
import json
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.cli.helpers import Run, nmip, sample
from tests.synthetic import Patient, make_ct_slice, make_study, planted_values, write

PATIENT = Patient()
#: Another patient of the export, whose one CT image says it has burned-in text: quarantined.
BURNED_PATIENT = Patient(patient_id="HOSP777001", name="OTHERSURNAME^OTHERGIVEN", other_id="NHS9434765870",
                         accession="ACC55512345")
# The folder names of a typical hospital export: the patient, the hospital number, the date.
EXPORT = Path("PLANTEDSURNAME_HOSP123456") / "20200315"
PSEUDONYM = re.compile(r"^[0-9A-Z]{12}$")
UID = re.compile(r"^2\.25\.\d{1,39}$")
OPAQUE = re.compile(r"^[0-9a-f]{32}\.(dcm|json)$")
DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
# nccid's Retain Device Identity option keeps Station Name and Device Serial Number on purpose.
RETAINED_BY_NCCID = {"site.station_name", "site.device_serial"}


@dataclass
class Tree:
    """An input tree, the files in it by role, and the identifiers planted in it."""

    root: Path
    study: list[Path]  # the synthetic study, 2 series x 3 instances
    ct_small: Path
    ultrasound: Path  # outside nccid's scope: excluded
    burned: Path  # a CT image with BurnedInAnnotation YES: quarantined
    unreadable: list[Path]
    dicomdirs: list[Path]
    planted: dict[str, str]  # label -> value, over the whole synthetic study

    def all_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def input_names(self) -> set[str]:
        """Every folder and file name of the input tree (stems too), none of which may name an output."""
        names = set()
        for path in self.root.rglob("*"):
            names.update({path.name, path.stem})
        return {n for n in names if len(n) >= 4}


def build_tree(root: Path) -> Tree:
    """A hospital export: a synthetic study, CT_small, an ultrasound, a CT with burned-in text, a text
    file, an empty file, two DICOMDIRs."""
    folder = root / EXPORT
    study = []
    planted: dict[str, str] = {}
    for i, ds in enumerate(make_study(PATIENT, n_series=2, n_per_series=3)):
        for label, value in planted_values(PATIENT, ds).items():
            planted[f"{label}@{i}" if label.startswith("uid.") else label] = value
        study.append(write(ds, folder / f"SERIES{i // 3 + 1}" / f"IMG{i + 1:04d}.dcm"))
    ct_small = folder / "CT_small.dcm"
    shutil.copyfile(sample("CT_small.dcm"), ct_small)
    ultrasound = folder / "US0001.dcm"
    shutil.copyfile(sample("examples_palette.dcm"), ultrasound)
    burned_slice = make_ct_slice(BURNED_PATIENT)
    burned_slice.BurnedInAnnotation = "YES"
    burned = write(burned_slice, folder / "BURNED" / "IMG0001.dcm")
    notes = folder / "notes.txt"
    notes.write_text(f"Export for {PATIENT.name}, hospital number {PATIENT.patient_id}\n")
    empty = folder / "empty.dcm"
    empty.write_bytes(b"")
    dicomdir = folder / "DICOMDIR"
    shutil.copyfile(sample("DICOMDIR"), dicomdir)
    renamed = folder / "INDEX.DCM"  # a DICOMDIR under another name: known by its content
    shutil.copyfile(sample("DICOMDIR"), renamed)
    return Tree(root, study, ct_small, ultrasound, burned, [empty, notes], [dicomdir, renamed], planted)


@dataclass
class Result:
    """One `anonymise` run and the folders it wrote."""

    run: Run
    output: Path
    quarantine: Path
    crosswalk: Path

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())

    def relative_outputs(self) -> list[str]:
        return [str(p.relative_to(self.output)) for p in self.outputs()]

    def mapping(self, kind: str) -> list[list[str]]:
        with open(self.crosswalk / f"{kind}_mapping.csv", newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))


def anonymise(tree: Tree, base: Path, name: str, key_file: Path) -> Result:
    """Run `anonymise` on the tree into `base/name-out`, with a crosswalk and a quarantine, on two workers."""
    output, quarantine, crosswalk = (base / f"{name}-{part}" for part in ("out", "quarantine", "crosswalk"))
    run = nmip("anonymise", tree.root, output, "--profile", "nccid", "--key-file", key_file,
               "--crosswalk", crosswalk, "--quarantine", quarantine, "--workers", "2", cwd=base)
    return Result(run, output, quarantine, crosswalk)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's working folder: input tree, outputs, quarantines and crosswalks side by side."""
    return tmp_path_factory.mktemp("anonymise")


@pytest.fixture(scope="module")
def tree(base: Path) -> Tree:
    """The hospital export every run of this module reads."""
    return build_tree(base / "input")


@pytest.fixture(scope="module")
def first(tree: Tree, base: Path, key_file: Path) -> Result:
    """The module's main run over the hospital export."""
    return anonymise(tree, base, "first", key_file)


@pytest.fixture(scope="module")
def outputs(first: Result) -> dict[str, object]:
    """Every output file parsed, by its path relative to the output folder."""
    return {str(p.relative_to(first.output)): dcmread(p) for p in first.outputs()}


def _summary(run: Run) -> tuple[int, int, int]:
    match = re.search(r"^written (\d+), excluded \d+, quarantined (\d+), unreadable (\d+)\b", run.stdout, re.MULTILINE)
    assert match, run.output
    return int(match[1]), int(match[2]), int(match[3])


# --- what the user sees -----------------------------------------------------------------------


def test_summary_counts_written_excluded_quarantined_unreadable(first: Result) -> None:
    """The summary line says written 7, excluded 1, quarantined 1, unreadable 2, and names the reasons."""
    assert _summary(first.run) == (7, 1, 2)
    assert re.search(r"^written 7, excluded 1, quarantined 1, unreadable 2\b", first.run.stdout, re.MULTILINE)
    assert re.search(r"quarantined 1: burned_in_annotation", first.run.stdout)
    assert re.search(r"excluded 1: out_of_scope", first.run.stdout)


def test_exits_1_when_something_was_quarantined_or_unreadable(first: Result) -> None:
    """anonymise exits 1 when a file was quarantined or unreadable."""
    assert first.run.returncode == 1


def test_progress_bar_counts_every_input_file(first: Result, tree: Tree) -> None:
    """The progress bar on stderr ends at N/N, N the number of input files."""
    total = len(tree.all_files())
    assert "de-identifying" in first.run.stderr
    assert f"{total}/{total}" in first.run.stderr


def test_unreadable_files_are_named(first: Result, tree: Tree) -> None:
    """Each unreadable file is reported by its path, and the run went on past it."""
    for path in tree.unreadable:
        assert re.search(re.escape(str(path)) + r": not a readable DICOM file", first.run.output), path
    assert len(first.outputs()) == 7


# --- the outputs --------------------------------------------------------------------------


def test_outputs_are_laid_out_by_pseudonym_study_series_instance(first: Result, outputs: dict[str, object]) -> None:
    """Each output is <pseudonym>/<study uid>/<series uid>/<sop uid>.dcm, named by its own de-identified values."""
    assert len(outputs) == 7
    for relative, ds in outputs.items():
        patient, study, series, instance = Path(relative).parts
        assert PSEUDONYM.match(patient) and ds.PatientID == patient, relative
        assert UID.match(study) and ds.StudyInstanceUID == study, relative
        assert UID.match(series) and ds.SeriesInstanceUID == series, relative
        assert instance == f"{ds.SOPInstanceUID}.dcm" and UID.match(ds.SOPInstanceUID), relative
    layout = {}
    for relative in outputs:
        patient, study, series, _ = Path(relative).parts
        layout.setdefault(patient, {}).setdefault(study, {}).setdefault(series, 0)
        layout[patient][study][series] += 1
    shapes = sorted(sorted(len(s) for s in studies.values()) for studies in layout.values())
    assert shapes == [[1], [2]], layout  # CT_small: one series; the synthetic study: two
    assert sorted(n for studies in layout.values() for s in studies.values() for n in s.values()) == [1, 3, 3]


def test_output_paths_hold_no_identifier_nor_input_name(first: Result, tree: Tree) -> None:
    """No output folder or file name contains a planted value or any input folder or file name."""
    forbidden = {v.lower() for v in tree.planted.values()} | {n.lower() for n in tree.input_names()}
    forbidden |= {"compressedsamples", "1ct1"}  # CT_small's patient
    for path in first.output.rglob("*"):
        relative = str(path.relative_to(first.output)).lower()
        hits = sorted(f for f in forbidden if f in relative)
        assert not hits, (relative, hits)


def test_outputs_say_identity_removed_and_name_the_key(outputs: dict[str, object], key_id: str) -> None:
    """Each output parses, has PatientIdentityRemoved YES, and the key id in DeidentificationMethod."""
    for relative, ds in outputs.items():
        assert ds.PatientIdentityRemoved == "YES", relative
        method = ds.DeidentificationMethod
        method = "\\".join(method) if not isinstance(method, str) else method
        assert key_id in method, (relative, method)


def test_no_planted_value_in_any_output_byte(first: Result, tree: Tree) -> None:
    """No planted identifier occurs, in any case, anywhere in any output file's bytes (but what nccid retains)."""
    needles = {label: value.lower().encode() for label, value in tree.planted.items() if label not in RETAINED_BY_NCCID}
    needles["ct_small.patient_name"] = b"compressedsamples"
    for path in first.outputs():
        data = path.read_bytes().lower()
        leaked = sorted(label for label, needle in needles.items() if needle in data)
        assert not leaked, (path.relative_to(first.output), leaked)


def test_dicomdirs_are_not_copied(first: Result, outputs: dict[str, object], tree: Tree) -> None:
    """Neither DICOMDIR (by name or by content) is output or quarantined, and the run says it skipped them."""
    assert all(ds.file_meta.MediaStorageSOPClassUID != DIRECTORY_STORAGE for ds in outputs.values())
    written = {p.name for p in first.outputs()} | {p.name for p in first.quarantine.iterdir()}
    assert not {"DICOMDIR", "INDEX.DCM"} & written
    dicomdir_bytes = sample("DICOMDIR").read_bytes()
    for path in [*first.outputs(), *first.quarantine.iterdir()]:
        assert path.read_bytes() != dicomdir_bytes, path
    for path in tree.dicomdirs:
        assert re.search(re.escape(str(path)) + r": DICOMDIR", first.run.output), path


# --- the quarantine ---------------------------------------------------------------------------


def test_burned_in_ct_is_quarantined_with_its_reason(first: Result, tree: Tree) -> None:
    """The CT with burned-in text lands in quarantine as <opaque>.dcm (its source bytes) + <opaque>.json
    with reason burned_in_annotation; the ultrasound, out of nccid's scope, is not there."""
    files = sorted(first.quarantine.iterdir())
    assert [p.suffix for p in files] == [".dcm", ".json"], files
    dcm, record = files
    assert dcm.stem == record.stem
    assert dcm.read_bytes() == tree.burned.read_bytes()
    reason = json.loads(record.read_text())
    assert reason["reason"] == "burned_in_annotation"
    assert reason["file"] == dcm.name
    assert reason["profile"] == "nccid"
    assert reason["detail"]


def test_quarantine_names_are_opaque(first: Result, tree: Tree) -> None:
    """Quarantine file names are opaque keyed hashes: no identifier, no input name."""
    source = dcmread(tree.burned, stop_before_pixels=True)
    identifiers = {str(source.get(k, "")).lower() for k in ("PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID")}
    forbidden = ({n.lower() for n in tree.input_names()} | identifiers) - {""}
    for path in first.quarantine.iterdir():
        assert OPAQUE.match(path.name), path.name
        assert not [f for f in forbidden if f in path.name.lower()], path.name


def test_nothing_else_about_a_quarantined_instance_is_output(first: Result, outputs: dict[str, object],
                                                             tree: Tree) -> None:
    """The quarantined CT and the excluded ultrasound have no output file and no crosswalk row."""
    assert all(ds.Modality != "US" for ds in outputs.values())
    olds = {row[0] for row in first.mapping("uid")} | {row[0] for row in first.mapping("patid")}
    for path in (tree.burned, tree.ultrasound):
        source = dcmread(path, stop_before_pixels=True)
        assert str(source.SOPInstanceUID) not in olds, path.name
        assert str(source.PatientID) not in olds, path.name


# --- the crosswalk ----------------------------------------------------------------------------


def test_crosswalk_files_are_private_with_the_midi_b_header(first: Result) -> None:
    """uid_mapping.csv and patid_mapping.csv have the header id_old,id_new and mode 0600."""
    for kind in ("uid", "patid"):
        path = first.crosswalk / f"{kind}_mapping.csv"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert first.mapping(kind)[0] == ["id_old", "id_new"]


def test_patid_mapping_gives_the_output_folder(first: Result) -> None:
    """patid_mapping maps HOSP123456 to the pseudonym naming the study's output folder (and 1CT1 to CT_small's)."""
    rows = first.mapping("patid")[1:]
    mapping = dict(rows)
    assert len(mapping) == len(rows) == 2
    assert set(mapping) == {PATIENT.patient_id, "1CT1"}
    for old, files in ((PATIENT.patient_id, 6), ("1CT1", 1)):
        folder = first.output / mapping[old]
        assert PSEUDONYM.match(mapping[old])
        assert len([p for p in folder.rglob("*.dcm")]) == files


def test_uid_mapping_gives_every_output_uid(first: Result, tree: Tree) -> None:
    """uid_mapping maps every source Study/Series/SOP Instance UID to the output's, and names each output file."""
    mapping = dict(first.mapping("uid")[1:])
    relative = set(first.relative_outputs())
    for path in [*tree.study, tree.ct_small]:
        source = dcmread(path, stop_before_pixels=True)
        patient = dict(first.mapping("patid")[1:])[str(source.PatientID)]
        expected = Path(patient, mapping[source.StudyInstanceUID], mapping[source.SeriesInstanceUID],
                        mapping[source.SOPInstanceUID] + ".dcm")
        assert str(expected) in relative, path.name
        out = dcmread(first.output / expected, stop_before_pixels=True)
        assert out.StudyInstanceUID == mapping[source.StudyInstanceUID]
        assert out.FrameOfReferenceUID == mapping[source.FrameOfReferenceUID]


# --- determinism and usage --------------------------------------------------------------------


def test_a_second_run_gives_identical_names(first: Result, tree: Tree, base: Path, key_file: Path) -> None:
    """Anonymising the same tree again into fresh folders gives the same output, quarantine and crosswalk."""
    again = anonymise(tree, base, "again", key_file)
    assert _summary(again.run) == _summary(first.run)
    assert again.relative_outputs() == first.relative_outputs()
    assert sorted(p.name for p in again.quarantine.iterdir()) == sorted(p.name for p in first.quarantine.iterdir())
    for kind in ("uid", "patid"):
        assert sorted(again.mapping(kind)) == sorted(first.mapping(kind))


def test_good_files_only_exit_0(base: Path, key_file: Path) -> None:
    """A folder holding only files that pass exits 0 with nothing quarantined or unreadable."""
    good = base / "good"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (good / "export").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample(name), good / "export" / name)
    run = nmip("anonymise", good, base / "good-out", "--profile", "nccid", "--key-file", key_file,
               "--quarantine", base / "good-quarantine", "--workers", "2", cwd=base)
    assert run.returncode == 0, run.output
    assert _summary(run) == (2, 0, 0)
    assert len(list((base / "good-out").rglob("*.dcm"))) == 2
    assert not (base / "good-quarantine").exists()


@pytest.mark.parametrize("inside", ["output", "quarantine", "crosswalk"])
def test_folders_inside_the_input_are_refused(base: Path, key_file: Path, inside: str) -> None:
    """An output, quarantine or crosswalk folder inside the input folder exits 2 before writing anything."""
    source = base / f"nested-{inside}"
    source.mkdir()
    shutil.copyfile(sample("CT_small.dcm"), source / "CT_small.dcm")
    folders = {"output": base / f"nested-{inside}-out", "quarantine": base / f"nested-{inside}-q",
               "crosswalk": base / f"nested-{inside}-cw"}
    folders[inside] = source / inside
    run = nmip("anonymise", source, folders["output"], "--profile", "nccid", "--key-file", key_file,
               "--quarantine", folders["quarantine"], "--crosswalk", folders["crosswalk"], "--workers", "1", cwd=base)
    assert run.returncode == 2
    assert "must not be inside the input folder" in run.stderr
    assert sorted(p.name for p in source.iterdir()) == ["CT_small.dcm"]
    assert not any(folder.exists() for folder in folders.values())


def test_a_file_that_cannot_be_written_does_not_stop_the_run(tmp_path: Path, key_file: Path) -> None:
    """When one output cannot be written (here its folder is a file), the others still are."""
    from tests.synthetic import make_study, write

    source = tmp_path / "in"
    study = make_study(Patient(), n_series=1, n_per_series=2)
    for index, ds in enumerate(study):
        write(ds, source / f"{index}.dcm")
    first = nmip("anonymise", source, tmp_path / "out", "--profile", "nccid", "--key-file", key_file,
                 "--quarantine", tmp_path / "q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    series_dir = next((tmp_path / "out").glob("*/*/*"))
    blocked = tmp_path / "out2" / series_dir.relative_to(tmp_path / "out")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    second = nmip("anonymise", source, tmp_path / "out2", "--profile", "nccid", "--key-file", key_file,
                  "--quarantine", tmp_path / "q", cwd=tmp_path)
    assert second.returncode == 1
    assert "written 0, excluded 0, quarantined 0, unreadable 0, failed 2" in second.stdout
    assert "NotADirectoryError" in second.stderr or "FileExistsError" in second.stderr
