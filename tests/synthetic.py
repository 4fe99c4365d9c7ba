"""Synthetic DICOM objects with identifying values planted everywhere they can hide.

The de-identification tests need inputs whose identifiers are known exactly, so they can
assert that none survives: not at the top level, not three sequences deep, not in a private
block, not in the file meta group, not in an overlay's label. Real sample files cannot give
that (their identifiers are unknown or already scrubbed), so this module builds them.

Every object is a valid CT Image Storage instance: dciodvfy reports no errors on it (with or
without the planted values), so a test can also check that de-identification keeps an object
valid rather than merely scrubbed.

    from tests.synthetic import Patient, make_ct_slice, make_study, planted_values, write
"""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UID, generate_uid

__all__ = [
    "Patient",
    "make_ct_slice",
    "make_study",
    "write",
    "planted_values",
    "INSTITUTION_NAME",
    "INSTITUTION_ADDRESS",
    "STATION_NAME",
    "SOURCE_AE_TITLE",
    "GEMS_CREATOR",
    "PLANTED_CREATOR",
    "nested_chain",
    "nested_item",
]


@dataclass(frozen=True)
class Patient:
    patient_id: str = "HOSP123456"
    name: str = "PLANTEDSURNAME^PLANTEDGIVEN"
    birth_date: str = "19610312"
    address: str = "12 Planted Street, Leeds"
    phone: str = "01132345678"
    other_id: str = "NHS9434765919"
    accession: str = "ACC99887766"


# Site-level identifiers planted alongside the patient's (they identify the hospital, and with
# a study date often the patient too).
INSTITUTION_NAME = "Planted General Hospital"
INSTITUTION_ADDRESS = "1 Planted Hospital Road, Leeds LS1 3EX"
INSTITUTION_DEPARTMENT = "Planted Radiology Department"
STATION_NAME = "PLANTEDCT01"
SOURCE_AE_TITLE = "HOSPPACS01"
OPERATOR_NAME = "PLANTEDOPERATOR^RADIOGRAPHER"
DEVICE_SERIAL = "PLANTEDSN4711"

# Private blocks. GEMS_ACQU_01 (0019,xx23) "Table Speed" is in PS3.15 Table E.3.10-1 (Safe
# Private Attributes), so the Retain Safe Private option keeps it; (0019,xx10) is not, and here
# holds the patient's name.
GEMS_CREATOR = "GEMS_ACQU_01"
GEMS_GROUP = 0x0019
GEMS_SAFE_ELEMENT = 0x23  # DS, Table Speed [mm/rotation]
GEMS_SAFE_VALUE = "1.5"
GEMS_UNSAFE_ELEMENT = 0x10
PLANTED_CREATOR = "PLANTED PRIVATE"
PLANTED_GROUP = 0x0029
PLANTED_ID_ELEMENT = 0x01  # LO: patient ID
PLANTED_SQ_ELEMENT = 0x02  # SQ: one item holding the birth date

# Other person names in the script of the character set under test; the Patient's Name itself
# always comes from Patient.name. Keys are the value(s) of Specific Character Set.
_SCRIPT_NAMES: dict[tuple[str, ...], tuple[str, str]] = {
    # (referring physician, other patient name)
    (): ("PLANTEDREFERRER^DOCTOR", "PLANTEDMAIDEN^PLANTEDGIVEN"),
    ("ISO_IR 6",): ("PLANTEDREFERRER^DOCTOR", "PLANTEDMAIDEN^PLANTEDGIVEN"),
    ("ISO_IR 100",): ("Brontë^Françoise", "Großmann^Jürgen"),
    ("ISO_IR 192",): ("Brontë^Françoise", "Ωμέγα^Ελένη"),
    ("", "ISO 2022 IR 87"): ("Suzuki^Ichiro=鈴木^一郎=すずき^いちろう", "Sato^Hanako=佐藤^花子=さとう^はなこ"),
}

# Code for the content items of the three-deep nested sequence.
_DCM = "DCM"


def _charset_values(charset: str | None) -> tuple[str, ...]:
    """Specific Character Set values for `charset` ("ISO_IR 192", "ISO 2022 IR 87", "\\ISO 2022 IR 87")."""
    if not charset:
        return ()
    values = tuple(v.strip() for v in charset.split("\\"))
    # The ISO 2022 multi-byte sets carry no G0 (ASCII) of their own: the standard's form is
    # "\ISO 2022 IR 87", i.e. value 1 empty (the default repertoire), value 2 the extension.
    if len(values) == 1 and values[0] in {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}:
        values = ("", values[0])
    return values


def _name_groups(name: str) -> list[list[str]]:
    """PN value -> component groups (alphabetic, ideographic, phonetic) -> components."""
    return [group.split("^") for group in name.split("=")]


def _surname(name: str) -> str:
    return _name_groups(name)[0][0]


def _code(value: str, meaning: str, scheme: str = _DCM) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _pixel_bytes(rows: int, columns: int) -> bytes:
    """Deterministic 12-bit ramp, stored little-endian in 16 bits."""
    values = [((r * 31 + c * 17) % 4096) for r in range(rows) for c in range(columns)]
    return struct.pack(f"<{len(values)}H", *values)


def _overlay_bytes(rows: int, columns: int) -> bytes:
    """A one-pixel frame around the image, bit-packed (first pixel in the lowest bit), even length."""
    nbits = rows * columns
    packed = bytearray((nbits + 7) // 8)
    for r in range(rows):
        for c in range(columns):
            if r in (0, rows - 1) or c in (0, columns - 1):
                i = r * columns + c
                packed[i // 8] |= 1 << (i % 8)
    if len(packed) % 2:
        packed.append(0)
    return bytes(packed)


def make_ct_slice(
    patient: Patient = Patient(),
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20200315",
    study_time: str = "233000",
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    charset: str | None = None,
    plant: bool = True,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    referenced_sop_uid: str | None = None,
) -> pydicom.Dataset:
    """A valid CT Image Storage instance (with file_meta, Explicit VR Little Endian, 16-bit MONOCHROME2 pixel data).

    With plant=True the patient's identifiers (and the hospital's) are planted in every place
    they can hide; see planted_values(). With plant=False the object carries only what the CT
    Image IOD requires: the Patient module (name, ID, birth date, sex), study date and time, and
    UIDs; Type 2 attributes that would identify (accession, referring physician) are empty.

    `referenced_sop_uid`, when given, adds a ReferencedImageSequence item pointing at that CT
    instance (make_study chains its instances this way).
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = sop_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    charsets = _charset_values(charset)
    referrer, other_name = _SCRIPT_NAMES.get(charsets, (_SCRIPT_NAMES[()][0], patient.name))
    surname = _surname(patient.name)

    ds = Dataset()
    if charsets:
        ds.SpecificCharacterSet = list(charsets) if len(charsets) > 1 else charsets[0]

    # --- SOP Common
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    if plant:
        ds.InstanceCreationDate = study_date
        ds.InstanceCreationTime = study_time

    # --- Patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "M"
    if plant:
        ds.IssuerOfPatientID = INSTITUTION_NAME
        other = Dataset()
        other.PatientID = patient.other_id
        other.IssuerOfPatientID = "NHS"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        ds.OtherPatientNames = other_name
        ds.PatientComments = f"Patient {patient.name} ID {patient.patient_id} born {patient.birth_date}"

    # --- Patient Study
    if plant:
        ds.PatientAge = "059Y"
        ds.PatientAddress = patient.address
        ds.PatientTelephoneNumbers = patient.phone

    # --- General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.ReferringPhysicianName = referrer if plant else ""
    ds.StudyID = "1"
    ds.AccessionNumber = patient.accession if plant else ""
    if plant:
        ds.StudyDescription = f"CT CHEST {surname}"
        ref_study = Dataset()
        ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
        ref_study.ReferencedSOPInstanceUID = study_uid
        ds.ReferencedStudySequence = Sequence([ref_study])

    # --- General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    if plant:
        ds.SeriesDate = study_date
        ds.SeriesTime = study_time
        ds.SeriesDescription = f"AXIAL {surname} {patient.patient_id}"
        ds.OperatorsName = OPERATOR_NAME
        ds.RequestAttributesSequence = Sequence([nested_chain(patient, study_uid, sop_uid)])

    # --- Frame of Reference
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""

    # --- General Equipment
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    if plant:
        ds.InstitutionName = INSTITUTION_NAME
        ds.InstitutionAddress = INSTITUTION_ADDRESS
        ds.InstitutionalDepartmentName = INSTITUTION_DEPARTMENT
        ds.StationName = STATION_NAME
        ds.ManufacturerModelName = "LightSpeed VCT"
        ds.DeviceSerialNumber = DEVICE_SERIAL

    # --- General Acquisition
    ds.AcquisitionNumber = 1
    if plant:
        ds.AcquisitionDate = study_date
        ds.AcquisitionTime = study_time
        ds.AcquisitionDateTime = f"{study_date}{study_time}.000000"

    # --- General Image
    ds.InstanceNumber = instance_number
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    if plant:
        ds.ImageComments = f"{surname} {patient.patient_id} {patient.accession}"
    if referenced_sop_uid:
        ref_image = Dataset()
        ref_image.ReferencedSOPClassUID = CTImageStorage
        ref_image.ReferencedSOPInstanceUID = referenced_sop_uid
        ds.ReferencedImageSequence = Sequence([ref_image])

    # --- Image Plane
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    z = -100.0 + 2.5 * (instance_number - 1)
    ds.ImagePositionPatient = [-22.4, -22.4, z]
    ds.SliceThickness = 2.5
    ds.SliceLocation = z

    # --- Image Pixel + CT Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.PixelData = _pixel_bytes(rows, columns)
    ds["PixelData"].VR = "OW"

    # --- VOI LUT
    ds.WindowCenter = 40
    ds.WindowWidth = 400

    if plant:
        # --- Overlay Plane, group 6000: its label carries the surname (burned-in text's cousin)
        ds.add_new(0x60000010, "US", rows)  # Overlay Rows
        ds.add_new(0x60000011, "US", columns)  # Overlay Columns
        ds.add_new(0x60000040, "CS", "G")  # Overlay Type
        ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
        ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
        ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
        ds.add_new(0x60001500, "LO", f"{surname} {patient.patient_id}")  # Overlay Label
        ds.add_new(0x60003000, "OW", _overlay_bytes(rows, columns))  # Overlay Data

        # --- Private blocks
        gems = ds.private_block(GEMS_GROUP, GEMS_CREATOR, create=True)
        gems.add_new(GEMS_SAFE_ELEMENT, "DS", GEMS_SAFE_VALUE)
        gems.add_new(GEMS_UNSAFE_ELEMENT, "LO", patient.name)
        planted = ds.private_block(PLANTED_GROUP, PLANTED_CREATOR, create=True)
        planted.add_new(PLANTED_ID_ELEMENT, "LO", patient.patient_id)
        inner = Dataset()
        inner.PatientBirthDate = patient.birth_date
        inner_block = inner.private_block(PLANTED_GROUP, PLANTED_CREATOR, create=True)
        inner_block.add_new(0x03, "DA", patient.birth_date)
        planted.add_new(PLANTED_SQ_ELEMENT, "SQ", Sequence([inner]))

    # --- File meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if plant:
        meta.SourceApplicationEntityTitle = SOURCE_AE_TITLE
    ds.file_meta = meta
    return ds


def nested_chain(patient: Patient, study_uid: str, sop_uid: str) -> Dataset:
    """RequestAttributesSequence item whose chain goes three sequences deep:

    RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[i]

    The deepest items are content items: a PNAME with the patient's name, which also carries
    the patient's ID and a reference to this instance; a TEXT with the patient's ID; a UIDREF
    with the study's UID.
    """
    request = Dataset()
    request.RequestedProcedureID = patient.accession
    request.ScheduledProcedureStepID = f"SPS{patient.patient_id}"
    request.RequestedProcedureDescription = f"CT CHEST {_surname(patient.name)}"

    protocol = _code("CTCHEST", "CT Chest protocol", "99PLANTED")

    name_item = Dataset()
    name_item.ValueType = "PNAME"
    name_item.ConceptNameCodeSequence = Sequence([_code("121029", "Subject Name")])
    name_item.PersonName = patient.name
    # Not part of the content item macro, but a de-identifier must find them wherever they are.
    name_item.PatientID = patient.patient_id
    name_item.ReferencedSOPInstanceUID = sop_uid

    id_item = Dataset()
    id_item.ValueType = "TEXT"
    id_item.ConceptNameCodeSequence = Sequence([_code("121030", "Subject ID")])
    id_item.TextValue = patient.patient_id

    uid_item = Dataset()
    uid_item.ValueType = "UIDREF"
    uid_item.ConceptNameCodeSequence = Sequence([_code("121018", "Procedure Study Instance UID")])
    uid_item.UID = study_uid

    protocol.ProtocolContextSequence = Sequence([name_item, id_item, uid_item])
    request.ScheduledProtocolCodeSequence = Sequence([protocol])
    return request


def nested_item(ds: Dataset) -> Dataset:
    """The deepest planted item (three sequences down), holding the patient's name and ID."""
    return ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[0]


def make_study(
    patient: Patient = Patient(),
    *,
    n_series: int = 2,
    n_per_series: int = 3,
    study_date: str = "20200315",
    **kw,
) -> list[pydicom.Dataset]:
    """One study: consistent StudyInstanceUID, FrameOfReferenceUID per series, instances referencing each other (ReferencedImageSequence -> previous instance's SOPInstanceUID).

    Instances are returned in order, series by series; each but the first references the one
    before it (across series too). Other keyword arguments go to make_ct_slice.
    """
    study_uid = kw.pop("study_uid", None) or generate_uid()
    for key in ("series_uid", "sop_uid", "instance_number", "frame_of_reference_uid", "series_number"):
        if key in kw:
            raise TypeError(f"make_study chooses {key} itself")
    instances: list[Dataset] = []
    previous: str | None = kw.pop("referenced_sop_uid", None)
    for s in range(n_series):
        series_uid = generate_uid()
        frame_uid = generate_uid()
        for i in range(n_per_series):
            ds = make_ct_slice(
                patient,
                study_uid=study_uid,
                series_uid=series_uid,
                frame_of_reference_uid=frame_uid,
                series_number=s + 1,
                instance_number=i + 1,
                study_date=study_date,
                referenced_sop_uid=previous,
                **kw,
            )
            previous = ds.SOPInstanceUID
            instances.append(ds)
    return instances


def write(ds: pydicom.Dataset, path: pathlib.Path) -> pathlib.Path:
    """Write as a DICOM Part 10 file (enforce_file_format=True) and return the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- planted_values ------------------------------------------------------------------------

# UI attributes that name a class or syntax, not an instance: they identify nothing.
_NON_INSTANCE_UIDS = {
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "CodingSchemeUID",
}


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    """Every element of ds at every depth (file meta included), sequences descended."""
    if getattr(ds, "file_meta", None) is not None:
        yield from ds.file_meta
    stack = [ds]
    while stack:
        item = stack.pop()
        for elem in item:
            yield elem
            if elem.VR == "SQ":
                stack.extend(elem.value)


def _strings(ds: Dataset) -> list[str]:
    out = []
    for elem in _walk(ds):
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        out.extend(str(v) for v in values)
    return out


def planted_values(patient: Patient, ds: pydicom.Dataset) -> dict[str, str]:
    """Every identifying string planted in ds (name and parts, IDs, accession, birth date, address, phone, original UIDs...), keyed by a label, for tests that assert none survives.

    Only values that actually occur in ds (at any depth, file meta included) are returned, so
    the same call works for plant=False objects. Labels:

      patient.*       the Patient's fields; patient.name.<group>.<n> for the name's parts
      person.*        other person names planted (referring physician, other name, operator)
      site.*          institution, address, department, station, AE title, serial number
      date.*          dates and the acquisition datetime (de-identification shifts or blanks them)
      uid.<Keyword>   every instance UID, by keyword (and uid.<Keyword>.<n> when several differ)

    Times of day are not included: bare "233000" strings would only make tests brittle.
    """
    candidates: dict[str, str] = {
        "patient.name": patient.name,
        "patient.patient_id": patient.patient_id,
        "patient.birth_date": patient.birth_date,
        "patient.address": patient.address,
        "patient.phone": patient.phone,
        "patient.other_id": patient.other_id,
        "patient.accession": patient.accession,
        "site.institution_name": INSTITUTION_NAME,
        "site.institution_address": INSTITUTION_ADDRESS,
        "site.department": INSTITUTION_DEPARTMENT,
        "site.station_name": STATION_NAME,
        "site.source_ae_title": SOURCE_AE_TITLE,
        "site.device_serial": DEVICE_SERIAL,
        "person.operator": OPERATOR_NAME,
    }
    for g, group in enumerate(_name_groups(patient.name)):
        for n, part in enumerate(group):
            if len(part) >= 2:
                candidates[f"patient.name.{g}.{n}"] = part

    # Person names and dates as planted in this very object.
    persons = {"ReferringPhysicianName": "person.referring_physician", "OtherPatientNames": "person.other_name"}
    dates = {"StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"}
    for elem in _walk(ds):
        kw = elem.keyword
        if elem.VR == "SQ" or elem.value in (None, ""):
            continue
        if kw in persons:
            candidates[persons[kw]] = str(elem.value)
            for g, group in enumerate(_name_groups(str(elem.value))):
                for n, part in enumerate(group):
                    if len(part) >= 2:
                        candidates[f"{persons[kw]}.{g}.{n}"] = part
        elif kw in dates:
            candidates[f"date.{kw}"] = str(elem.value)
        elif kw == "AcquisitionDateTime":
            candidates["date.AcquisitionDateTime"] = str(elem.value)
        elif elem.VR == "UI" and kw not in _NON_INSTANCE_UIDS and UID(str(elem.value)).name == str(elem.value):
            label = f"uid.{kw or elem.tag}"
            n = 1
            while label in candidates and candidates[label] != str(elem.value):
                n += 1
                label = f"uid.{kw or elem.tag}.{n}"
            candidates[label] = str(elem.value)

    haystack = _strings(ds)
    return {label: value for label, value in candidates.items() if any(value in s for s in haystack)}
