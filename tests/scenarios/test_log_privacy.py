"""Issue 12, "Logs": nothing the agent logs, exports as metrics, prints or writes carries an
identifier, except where identifiable data lives on site by design.

One full pass, against the real test platform (nginx, mutual TLS, Orthanc DICOMweb), with the
agent logging at debug level:

- receive: storescu (the PACS) sends one CT study whose identifiers are planted in every
  attribute a sender can fill (names of the patient and of every person, hospital and NHS
  numbers, birth date, address, telephone, accession, institution, station, free text naming the
  patient, a private block, a nested sequence, an overlay label) and whose UIDs were built from
  the accession number, one of them not even a conformant UID;
- de-identify; quarantine (a series whose slice says BurnedInAnnotation YES; a slice the platform
  refuses); exclude (a dose SR, out of the profile's scope; a dose screen, excluded by rule);
- deliver, after an outage of the platform (the agent logs its failures and retries);
- clinical: an export whose file name names the patient, with a good row, a bad row (rejects) and
  identifying columns; an export with a misspelt header and one with no header row (refused);
- and a scrape of /healthz, /readyz, /metrics, `status` (text and --json), `quarantine list`,
  `quarantine show`, `config check` and `support-bundle`, during the outage and after delivery.

Then every byte is searched, for every planted value in the forms it may be written in (any case,
name carets as spaces, NHS numbers spaced, dates as YYYYMMDD, ISO and dd/mm/yyyy, URL-encoded),
in UTF-8 and UTF-16, inside gzip and tar too, and for the marker "ZQX" that every planted text
carries: the daemon's stdout and stderr (receivers and workers write there too), the scrapes and
CLI outputs, the support bundle, every file under the agent's folders and their names, the
outbox as it stood while it waited, the daemon's temporary folder, and everything the platform
holds (Orthanc's storage and index, the PUT manifests and CSV, nginx's logs).

Left out, as identifiable by design: the spool, the quarantine, the state database (with its
crosswalk) and its -wal and -shm, the drop folder, the originals held, archived or refused, and
the test's own copies of what it sent. The station name and device serial number are kept by
the nccid profile (Retain Device Identity): they may reach the outbox and the platform, nowhere
else.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from agent.deidentify.pseudonym import Pseudonymiser, PseudonymSettings
from agent.keys import load_key_file
from tests.peers.dcmtk import dcmtk_available
from tests.peers.platform import Platform, central_platform, clean_platform  # noqa: F401
from tests.peers.ports import free_port
from tests.scenarios.daemon import storescu, wait_for
from tests.scenarios.test_delivery import agent_for
from tests.scenarios.test_scope import dose_sr, ge_dose_screen
from tests.synthetic import Patient, make_ct_slice, make_study, planted_values, write

pytestmark = [
    pytest.mark.skipif(not dcmtk_available(), reason="DCMTK is installed by make test"),
    # The sender's non-conformant UID: pydicom warns each time the test copies or writes it.
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
]

MARKER = "ZQX"  # in every planted text value: found anywhere it must not be, it is a leak
ROOT = "1.2.826.0.1.3680043.8.498"
SURNAME, GIVEN = "ZQXHOLLOWAY", "ZQXMARGERY"
HOSPITAL_NUMBER = "ZQX731942"
NHS_NUMBER = "7315092641"  # valid (modulus 11)
BIRTH_DATE = "19380417"
ACCESSION_DIGITS = "881273460519"
ACCESSION = MARKER + ACCESSION_DIGITS
STUDY_DATE = "20191107"
PATIENT = Patient(patient_id=HOSPITAL_NUMBER, name=f"{SURNAME}^{GIVEN}", birth_date=BIRTH_DATE,
                  address="41 Zqxbrook Lane, Wetherby LS22 9ZQ", phone="07700900461", other_id=NHS_NUMBER,
                  accession=ACCESSION)
STUDY_UID = f"{ROOT}.{ACCESSION_DIGITS}"  # a PACS that builds UIDs from accession numbers
NON_CONFORMANT_UID = f"{ROOT}.{ACCESSION}.9.1"  # letters in a UID: one that does so carelessly

PEOPLE = {
    "ReferringPhysicianName": "ZQXREFERRER^HELENA",
    "PerformingPhysicianName": "ZQXPERFORMER^OWEN",
    "OperatorsName": "ZQXOPERATOR^RITA",
    "NameOfPhysiciansReadingStudy": "ZQXREADER^IAN",
    "RequestingPhysician": "ZQXREQUESTER^ANNE",
    "PhysiciansOfRecord": "ZQXRECORDHOLDER^PAUL",
    "OtherPatientNames": f"ZQXMAIDEN^{GIVEN}",
    "PatientMotherBirthName": "ZQXMOTHERNAME^JOAN",
}
TEXTS = {
    "InstitutionName": "ZQX Royal Infirmary",
    "InstitutionAddress": "1 Zqxinfirmary Road, Leeds LS1 3ZQ",
    "InstitutionalDepartmentName": "ZQX Radiology Department",
    "IssuerOfPatientID": "ZQX Royal Infirmary",
    "StudyDescription": f"CT CHEST {SURNAME}",
    "StudyID": "ZQXSTUDY42",
    "PatientComments": f"NHS {NHS_NUMBER[:3]} {NHS_NUMBER[3:6]} {NHS_NUMBER[6:]}, born 17/04/1938, next of kin "
                       "ZQXKINSMAN PETER",
    "AdditionalPatientHistory": f"lives at {PATIENT.address}; tel {PATIENT.phone}",
    "AdmittingDiagnosesDescription": f"fall at home ({SURNAME.title()})",
    "MedicalRecordLocator": HOSPITAL_NUMBER,
}
#: Kept by the nccid profile (Retain Device Identity): allowed in the outbox and on the platform only.
KEPT = {"StationName": "ZQXSTATION7", "DeviceSerialNumber": "ZQXSERIAL4711"}

# The clinical exports: the patient above, and three others who appear only in rows or files the
# agent does not upload.
SECOND_NUMBER, SECOND_NHS, SECOND_SURNAME = "ZQX555021", "6024183755", "ZQXREJECTEDROW"
THIRD_NUMBER, THIRD_NHS, THIRD_SURNAME = "ZQX600777", "5589031176", "ZQXNOHEADER"
FOURTH_NUMBER, FOURTH_SURNAME = "ZQX600778", "ZQXMISSPELT"
SCHEMA: dict[str, Any] = {
    "patient_id": {"column": "Hospital Number", "issuer": "RXX"},
    "columns": {
        "admission_date": {"type": "date", "formats": ["%d/%m/%Y", "%Y-%m-%d"], "required": True},
        "age": {"type": "integer", "range": [0, 120], "generalise": {"band": 5, "top": 90}},
        "outcome": {"type": "code", "allowed": ["discharged", "died", "transferred"]},
        "surname": {"drop": True, "identifying": True},
        "nhs_number": {"drop": True, "identifying": True},
        "date_of_birth": {"drop": True, "identifying": True},
        "address": {"drop": True, "identifying": True},
        "notes": {"drop": True},
    },
}
HEADER = "Hospital Number,Surname,NHS Number,Date of Birth,Address,Admission Date,Age,Outcome,Notes"
EXPORT = "\n".join((
    HEADER,
    f'{HOSPITAL_NUMBER},{SURNAME},{NHS_NUMBER[:3]} {NHS_NUMBER[3:6]} {NHS_NUMBER[6:]},17/04/1938,'
    f'"{PATIENT.address}",03/11/2019,81,died,"{SURNAME} {GIVEN} seen by Dr ZQXREFERRER, tel {PATIENT.phone}"',
    f"{SECOND_NUMBER},{SECOND_SURNAME},{SECOND_NHS},12/06/1950,\"2 Zqxrow Close, Otley\",31/02/2020,69,recovered,"
    "ZQXROWNOTE",  # no 31 February, no such outcome: a rejected row
)) + "\n"
NO_HEADER_EXPORT = (f"{THIRD_NUMBER},{THIRD_SURNAME},{THIRD_NHS},05/01/1944,\"3 Zqxnohead Road, Ilkley\",04/11/2019,"
                    "75,died,\n")
MISSPELT_EXPORT = (HEADER.replace("Hospital Number", "Hospital Numbr").replace("Admission Date", "Admision Date")
                   + f"\n{FOURTH_NUMBER},{FOURTH_SURNAME},,,,05/11/2019,50,died,\n")
#: The export's file name names the patient, as some exports do.
EXPORT_NAME = f"{SURNAME}_{GIVEN}_{HOSPITAL_NUMBER}_{NHS_NUMBER}_{BIRTH_DATE}.csv"

CLINICAL_VALUES = {
    "clinical.second_number": SECOND_NUMBER, "clinical.second_nhs": SECOND_NHS,
    "clinical.second_surname": SECOND_SURNAME, "clinical.second_birth_date": "19500612",
    "clinical.second_address": "2 Zqxrow Close, Otley", "clinical.second_note": "ZQXROWNOTE",
    "clinical.bad_date": "31/02/2020",
    "clinical.third_number": THIRD_NUMBER, "clinical.third_nhs": THIRD_NHS, "clinical.third_surname": THIRD_SURNAME,
    "clinical.third_birth_date": "19440105", "clinical.third_address": "3 Zqxnohead Road, Ilkley",
    "clinical.fourth_number": FOURTH_NUMBER, "clinical.fourth_surname": FOURTH_SURNAME,
    "clinical.admission_date": "20191103",
}

# --- the sources ------------------------------------------------------------------------------


def _plant(ds: Dataset) -> Dataset:
    """Every identifying attribute a sender can fill, beyond what tests.synthetic plants."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in {**PEOPLE, **KEPT}.items():
            setattr(ds, keyword, value)
        for keyword, value in TEXTS.items():
            setattr(ds, keyword, value)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ds.InstanceCreationDate = STUDY_DATE
        ds.AcquisitionDateTime = f"{STUDY_DATE}101500"
        plan = Dataset()
        plan.CodeValue, plan.CodingSchemeDesignator = HOSPITAL_NUMBER, "99ZQXPLAN"
        plan.CodeMeaning = f"insured {SURNAME}"
        ds.PatientInsurancePlanCodeSequence = Sequence([plan])
        # A site's private block: the NHS number (spaced) and a nested item naming the patient.
        block = ds.private_block(0x0031, "SITE PRIVATE 1", create=True)
        block.add_new(0x01, "LO", f"{NHS_NUMBER[:3]} {NHS_NUMBER[3:6]} {NHS_NUMBER[6:]}")
        inner = Dataset()
        inner.PatientName = PATIENT.name
        inner.AccessionNumber = ACCESSION
        block.add_new(0x02, "SQ", Sequence([inner]))
        # Deeper still: the requesting physician and the accession in the request's protocol item.
        request = ds.RequestAttributesSequence[0]
        request.RequestingPhysician = PEOPLE["RequestingPhysician"]
        request.AccessionNumber = ACCESSION
    return ds


def _renumber(study: list[Dataset]) -> None:
    """SOP Instance UIDs built from the accession number, and the references to them kept right."""
    uids: dict[str, str] = {}
    for ds in study:
        uids[str(ds.SOPInstanceUID)] = f"{STUDY_UID}.{ds.SeriesNumber}.{ds.InstanceNumber}"
    for ds in study:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(uids[str(ds.SOPInstanceUID)])
        for ref in ds.get("ReferencedImageSequence", []):
            ref.ReferencedSOPInstanceUID = uids.get(ref.ReferencedSOPInstanceUID, ref.ReferencedSOPInstanceUID)
        item = ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[0]
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID


def sources() -> tuple[list[Dataset], dict[str, Dataset]]:
    """Every instance the PACS sends, and those with a part to play, by role."""
    study = make_study(PATIENT, n_series=3, n_per_series=3, study_date=STUDY_DATE, study_uid=STUDY_UID)
    _renumber(study)
    for ds in study:
        _plant(ds)
    study[4].BurnedInAnnotation = "YES"  # series 2 is held whole
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        odd = _plant(make_ct_slice(PATIENT, study_uid=STUDY_UID, sop_uid=NON_CONFORMANT_UID, series_number=9,
                                   study_date=STUDY_DATE))
    report = dose_sr(PATIENT, STUDY_UID)  # out of nccid's scope: excluded
    report.StudyDate, report.ReferringPhysicianName = STUDY_DATE, PEOPLE["ReferringPhysicianName"]
    report.ContentSequence[0].TextValue = f"Scanned for {PATIENT.name}, NHS {NHS_NUMBER}, DLP 412 mGy.cm"
    screen = _plant(ge_dose_screen(PATIENT, STUDY_UID))  # excluded by rule
    roles = {"refused_by_platform": study[1], "burned_in": study[4], "non_conformant": odd}
    return [*study, odd, report, screen], roles


# --- what is searched, and how ----------------------------------------------------------------


def _forms(value: str) -> set[str]:
    """The ways a value may be written: as is, names with their carets as spaces or commas,
    NHS numbers spaced, dates in the usual forms, URL-encoded. Case is ignored by the search."""
    found = {value, value.replace("^", " "), value.replace("^", ", "), value.replace("^", ""), quote(value),
             quote(value.replace("^", " ")), value.replace(" ", "+"), value.replace(" ", "_")}
    digits = value.replace(" ", "")
    if digits.isdigit() and len(digits) == 10:  # an NHS number
        found |= {digits, f"{digits[:3]} {digits[3:6]} {digits[6:]}", f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"}
    if value.isdigit() and len(value) == 8 and value[:2] in ("19", "20"):  # a date
        y, m, d = value[:4], value[4:6], value[6:]
        found |= {f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{d}.{m}.{y}", f"{d}-{m}-{y}", f"{y}/{m}/{d}"}
    return {form for form in found if len(form) >= 6}


def needles(values: dict[str, str]) -> dict[bytes, str]:
    """Every form of every value, lower case, in UTF-8 and UTF-16 (both byte orders): -> its label."""
    found: dict[bytes, str] = {}
    for label, value in values.items():
        for form in _forms(value):
            for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                found.setdefault(form.lower().encode(encoding), label)
    return found


def expand(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """A blob and, when it is gzip or tar, what it holds (recursively)."""
    blobs = [(name, data)]
    if data[:2] == b"\x1f\x8b":
        try:
            blobs += expand(f"{name}!gunzip", gzip.decompress(data))
        except (OSError, EOFError):
            pass
    if len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            members = archive.getmembers()
            for member in members:
                extracted = archive.extractfile(member)
                if extracted is not None:
                    blobs += expand(f"{name}!{member.name}", extracted.read())
        blobs.append((f"{name}!names", "\n".join(member.name for member in members).encode()))
    return blobs


def leaks(blobs: list[tuple[str, bytes]], values: dict[str, str], kept: dict[str, str] | None = None) -> list[str]:
    """Where a planted value, or the marker, is found: "where: label" lines (the marker's with
    what surrounds it). Values in `kept` are allowed in these blobs (and removed before the marker
    is looked for)."""
    searched = needles({k: v for k, v in values.items() if v not in (kept or {}).values()})
    allowed = needles(kept or {})
    markers = [MARKER.lower().encode(encoding) for encoding in ("utf-8", "utf-16-le", "utf-16-be")]
    found: list[str] = []
    for where, data in blobs:
        for name, blob in expand(where, data):
            text = blob.lower()
            hits = sorted({label for needle, label in searched.items() if needle in text})
            for needle in allowed:
                text = text.replace(needle, b"")
            for needle in markers:
                at = text.find(needle)
                if at >= 0:
                    hits.append(f"marker {MARKER} in ...{text[max(0, at - 60):at + 60]!r}...")
                    break
            found += [f"{name}: {hit}" for hit in hits]
    return found


# --- running it -------------------------------------------------------------------------------


def nmip(agent: Any, outputs: list[tuple[str, bytes]], *args: str, env: dict[str, str]) -> str:
    """Run a command of the CLI; its stdout and stderr are kept to be searched."""
    run = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, timeout=120, env=env,
                         cwd=agent.root)
    label = " ".join(a for a in args if not a.startswith("/"))
    outputs += [(f"`{label}` stdout", run.stdout), (f"`{label}` stderr", run.stderr)]
    assert run.returncode in (0, 1), (args, run.stderr.decode(errors="replace"))
    return run.stdout.decode()


def scrape(agent: Any, observe: int, outputs: list[tuple[str, bytes]], phase: str, env: dict[str, str]) -> str:
    """Everything an operator or the hospital's monitoring reads; returns a quarantined study key."""
    base = f"http://127.0.0.1:{observe}"
    for path in ("/healthz", "/readyz", "/metrics"):
        answer = httpx.get(base + path, timeout=30)
        outputs.append((f"{phase} GET {path}", answer.content))
    config = str(agent.config_path)
    report = json.loads(nmip(agent, outputs, "status", "--config", config, "--json", env=env))
    nmip(agent, outputs, "status", "--config", config, env=env)
    nmip(agent, outputs, "quarantine", "list", "--config", config, env=env)
    nmip(agent, outputs, "config", "check", "--config", config, env=env)
    key = report["quarantine"][0]["study_key"]
    nmip(agent, outputs, "quarantine", "show", key, "--config", config, env=env)
    return str(key)


#: Under the agent's root: identifiable by design, so their contents are not searched (their
#: file names are: they are opaque keys everywhere but in the drop folder, which the hospital names).
BY_DESIGN = ("spool", "quarantine", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "drop", "held",
             "archive", "rejects/refused")


def _by_design(relative: Path) -> bool:
    text = relative.as_posix()
    return any(text == place or text.startswith(place + "/") for place in BY_DESIGN)


def agent_files(root: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(contents of the files searched, names of every file but the drop folder's)."""
    contents, names = [], []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not relative.as_posix().startswith("drop/"):
            names.append(relative.as_posix())
        if path.is_file() and not path.is_symlink() and not _by_design(relative):
            contents.append((f"agent/{relative.as_posix()}", path.read_bytes()))
    return contents, names


def test_a_full_pass_logs_exports_and_writes_no_identifier(tmp_path: Path, clean_platform: Platform) -> None:
    sent, roles = sources()
    files = [write(ds, tmp_path / "pacs" / f"{i:02d}.dcm") for i, ds in enumerate(sent)]
    observe = free_port()
    agent = agent_for(tmp_path / "agent", clean_platform, clinical=True, clinical__schema=SCHEMA,
                      observe__port=observe, log__level="debug")
    temporary = tmp_path / "agent-tmp"
    temporary.mkdir(mode=0o700)
    env = {**os.environ, "TMPDIR": str(temporary)}
    agent.env["TMPDIR"] = str(temporary)
    names = Pseudonymiser(load_key_file(agent.root / "site.key"), PseudonymSettings())
    outputs: list[tuple[str, bytes]] = []
    outbox_seen: dict[str, bytes] = {}
    bundle = tmp_path / "support" / "bundle.tar.gz"

    clean_platform.stop()  # an outage first: the agent logs its failures, and the outbox waits
    try:
        with agent:
            sent_by_pacs = storescu(agent.port, files)
            assert sent_by_pacs.returncode == 0, sent_by_pacs.stdout + sent_by_pacs.stderr
            drop = agent.root / "drop"
            drop.mkdir(mode=0o700, exist_ok=True)
            for name, text in ((EXPORT_NAME, EXPORT), (f"{THIRD_SURNAME}_{THIRD_NUMBER}.csv", NO_HEADER_EXPORT),
                               (f"{FOURTH_SURNAME}_{FOURTH_NUMBER}.csv", MISSPELT_EXPORT)):
                (drop / name).write_text(text)
                (drop / f"{name}.done").write_text("")
            report = wait_for(lambda: (r := agent.status())["studies"].get("queued") == 1
                              and r["clinical_batches"] == {"queued": 1, "refused": 2}
                              and r["delivery"]["problem"] and r, 90, 0.3, "the study and the CSV waiting")
            assert report["instances"].get("excluded") == 2 and report["instances"].get("quarantined") == 3
            for path in sorted((agent.root / "outbox").rglob("*")):
                if path.is_file():
                    try:
                        outbox_seen[path.relative_to(agent.root).as_posix()] = path.read_bytes()
                    except FileNotFoundError:
                        pass
            assert sum(name.endswith(".dcm") for name in outbox_seen) == 7
            assert any(name.startswith("outbox/clinical/") for name in outbox_seen)
            scrape(agent, observe, outputs, "outage", env)

            refused = names.uid(str(roles["refused_by_platform"].SOPInstanceUID))
            clean_platform.reject_sop_instances({refused})
            clean_platform.start()
            report = wait_for(lambda: (r := agent.status())["studies"].get("purged") == 1
                              and r["clinical_batches"].get("uploaded") == 1 and r, 90, 0.3, "delivery")
            scrape(agent, observe, outputs, "delivered", env)
            nmip(agent, outputs, "support-bundle", "--config", str(agent.config_path), str(bundle), "--log",
                 str(agent.log_path), env=env)
    finally:
        if not clean_platform.running:
            clean_platform.start()

    # The pass went as planned: every part of it happened, so every part of it was searched.
    assert report["instances"] == {"purged": 6, "quarantined": 4, "excluded": 2}, report["instances"]
    reasons = {r for s in report["quarantine"][0]["series"] for r in s["reasons"]}
    assert reasons == {"burned_in_annotation", "series_quarantined", "platform_rejected"}, reasons
    assert len(clean_platform.stored_sop_instance_uids()) == 6
    assert names.uid(NON_CONFORMANT_UID) in clean_platform.stored_sop_instance_uids()
    assert len(clean_platform.put_files("clinical")) == 1 and len(clean_platform.put_files("manifests")) == 1
    assert len(list((agent.root / "rejects").glob("*.rejects.csv"))) == 3
    log = agent.log_path.read_bytes()
    for event in ("association_closed", "study_deidentified", "platform_delivery_paused", "platform_reachable_again",
                  "instance_refused_by_platform", "study_manifest_sent", "study_delivered", "clinical_file_checked",
                  "clinical_batch_uploaded", "agent_stopped"):
        assert f'"{event}"'.encode() in log, event

    # What is planted: every value tests.synthetic finds in the sources, and the test's own.
    values: dict[str, str] = {}
    for ds in sent:
        for label, value in planted_values(PATIENT, ds).items():
            if len(value) >= 6:
                values.setdefault(f"{label}#{value}", value)
    values |= {f"person.{k}": v for k, v in PEOPLE.items()}
    values |= {f"text.{k}": v for k, v in TEXTS.items()}
    values |= {f"kept.{k}": v for k, v in KEPT.items()}
    values |= {"patient.nhs_number": NHS_NUMBER, "accession.digits": ACCESSION_DIGITS,
               "uid.non_conformant": NON_CONFORMANT_UID, "uid.study": STUDY_UID, "export.file_name": EXPORT_NAME,
               "person.kin": "ZQXKINSMAN PETER", "person.doctor": "ZQXREFERRER"}
    values |= CLINICAL_VALUES
    values |= {f"part.{part}": part for value in list(values.values()) for part in value.replace("^", " ")
               .replace(",", " ").replace("_", " ").split() if MARKER in part.upper() and len(part) >= 6}

    # The search finds what it looks for: in a source gzipped, a name in UTF-16 with spaces for its
    # caret, a date written the British way; and it looks inside the bundle's tar.
    control = leaks([("source", gzip.compress(files[0].read_bytes())),
                     ("utf-16", f"{GIVEN.title()} {SURNAME.title()}".encode("utf-16-le")),
                     ("british date", b"born 17/04/1938")], values)
    assert "source!gunzip: patient.patient_id#ZQX731942" in control, control
    assert "british date: patient.birth_date#19380417" in control, control
    assert any(hit.startswith("utf-16: ") and "marker" not in hit for hit in control), control
    assert "support bundle!nmip-agent-support/log.jsonl".replace("!", "!gunzip!", 1) in {
        name for name, _ in expand("support bundle", bundle.read_bytes())}

    # What the agent said, printed, exported and wrote, outside the identifiable places.
    said = [("daemon stdout+stderr", log)] + outputs + [("support bundle", bundle.read_bytes())]
    written, file_names = agent_files(agent.root)
    temporary_files = [(f"TMPDIR/{p.relative_to(temporary)}", p.read_bytes()) for p in temporary.rglob("*")
                       if p.is_file()]
    found = leaks(said + written + temporary_files + [("agent file names", "\n".join(file_names).encode())], values)

    # What waited in the outbox, and what the platform holds: de-identified, device identity kept.
    waited = [(f"agent/{name}", data) for name, data in outbox_seen.items()]
    waited.append(("outbox file names", "\n".join(outbox_seen).encode()))
    # The test platform's own keys and certificates are random base64, not what the agent sent:
    # the marker turns up in them by chance ("zqx" in one key of about fifty).
    held = [(f"platform/{p.relative_to(clean_platform.workdir)}", p.read_bytes())
            for p in sorted(clean_platform.workdir.rglob("*"))
            if p.is_file() and "pki" not in p.relative_to(clean_platform.workdir).parts]
    held += [(f"platform instance {uid}", clean_platform.instance_bytes(uid))
             for uid in sorted(clean_platform.stored_sop_instance_uids())]
    found += leaks(waited + held, values, kept=KEPT)
    assert not found, "identifiers where none may be:\n" + "\n".join(found[:80])
