"""A free-text corpus: identifiers planted where the source's structured attributes do not name them.

Each case is one CT slice (tests/synthetic.py) with one kind of identifier written somewhere a
hospital's data puts it: third-party names (staff, next of kin), identifiers in another format
(a spaced NHS number, a birth date without separators, a phone, a postcode and street), parts of
the patient's own identifiers (one half of a hyphenated surname, a shortened institution name),
person names outside Table E.1-1, staff in sequences, and names in single-byte non-Latin character
sets. `planted` lists the strings that must not leave, in any case or character set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.synthetic import Patient, make_ct_slice

# The patient of every case: a hyphenated surname, so its halves can be planted alone.
PATIENT = Patient(name="WARBURTON-OKAFOR^JANE^ELIZABETH", patient_id="RX4471902", birth_date="19610412",
                  address="14 Acacia Avenue, Ely", phone="01353 662211", other_id="9434765919")
INSTITUTION = "Thornbury Vale General Hospital"


@dataclass
class Case:
    """One planted identifier: where it goes, what must not survive, and whether the gate alone can see it."""

    name: str
    plant: Callable[[Dataset], None]
    planted: tuple[str, ...]
    charset: str | None = None
    gate_can_see: bool = True  # False where only removal helps (an occupation is no pattern)
    keep: tuple[str, ...] = field(default_factory=tuple)  # tags a site must KEEP for the gate-alone test


def _code(value: str, meaning: str, scheme: str = "99LOCAL") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def plant(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return plant


def _operator_sequence(ds: Dataset) -> None:
    person = Dataset()
    person.PersonIdentificationCodeSequence = Sequence([_code("RAM01", "Priya Ramanathan")])
    person.InstitutionName = INSTITUTION
    person.PersonTelephoneNumbers = "0113 496 0777"
    ds.OperatorIdentificationSequence = Sequence([person])


def _verifying_observer(ds: Dataset) -> None:
    observer = Dataset()
    observer.VerifyingObserverName = "Adeyemi^Olusegun"
    observer.VerifyingOrganization = INSTITUTION
    observer.VerificationDateTime = "20200315101500"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([_code("ADE7", "Olusegun Adeyemi")])
    ds.VerifyingObserverSequence = Sequence([observer])


def _institution_code(ds: Dataset) -> None:
    ds.InstitutionCodeSequence = Sequence([_code("RTV", INSTITUTION)])


def _acquisition_context(ds: Dataset) -> None:
    item = Dataset()
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121106", "Comment", "DCM")])
    item.TextValue = "Consent witnessed by Mrs Brookes"
    ds.AcquisitionContextSequence = Sequence([item])


def _content_sequence(ds: Dataset) -> None:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121106", "Comment", "DCM")])
    item.TextValue = "Patient Jane Warburton-Okafor, NHS 943 476 5919"
    ds.ContentSequence = Sequence([item])


def _specimen(ds: Dataset) -> None:
    step = Dataset()
    step.ValueType = "TEXT"
    step.ConceptNameCodeSequence = Sequence([_code("121106", "Comment", "DCM")])
    step.TextValue = "Taken by Dr Kowalski"
    spec = Dataset()
    spec.SpecimenPreparationStepContentItemSequence = Sequence([step])
    ds.SpecimenPreparationSequence = Sequence([spec])


def _pn_outside_table(ds: Dataset) -> None:
    ds.add_new(0x0040A067, "PN", "Fairweather^Imogen")  # Document Author (Trial), retired, not in E.1-1
    ds.add_new(0x00140104, "PN", "Lindqvist^Henrik")  # Secondary Reviewer Name, not in E.1-1


def _station(name: str, text: str) -> Callable[[Dataset], None]:
    def plant(ds: Dataset) -> None:
        ds.PatientName = name
        ds.StationName = text

    return plant


CASES: tuple[Case, ...] = (
    Case("staff_in_patient_comments", _set("PatientComments", "Scanned by P Ramanathan on ward 7B"), ("Ramanathan",),
         keep=("(0010,4000)",)),
    Case("next_of_kin", _set("AdditionalPatientHistory", "NOK: Mary Okonkwo (daughter) 07700 900123"),
         ("Okonkwo", "07700 900123"), keep=("(0010,21B0)",)),
    Case("doctor_in_image_comments", _set("ImageComments", "Reviewed with Dr Olusegun Adeyemi"), ("Adeyemi", "Olusegun"),
         keep=("(0020,4000)",)),
    Case("spaced_nhs_number", _set("ImageComments", "ref 943 476 5919"), ("943 476 5919",), keep=("(0020,4000)",)),
    Case("dashed_nhs_number", _set("ImageComments", "nhs no 401-023-2137"), ("401-023-2137",), keep=("(0020,4000)",)),
    Case("birth_date_compact", _set("ImageComments", "dob 12041961"), ("12041961",), keep=("(0020,4000)",)),
    Case("birth_date_prose", _set("ImageComments", "born 12 April 1961"), ("12 April 1961",), keep=("(0020,4000)",)),
    Case("other_date_prose", _set("ImageComments", "prior scan 3rd March 2019"), ("3rd March 2019",), keep=("(0020,4000)",)),
    Case("phone", _set("ImageComments", "call 0113 496 0123 with results"), ("0113 496 0123",), keep=("(0020,4000)",)),
    Case("mobile_international", _set("ImageComments", "mob +44 7700 900 456"), ("7700 900 456",), keep=("(0020,4000)",)),
    Case("email", _set("ImageComments", "send to j.okafor@example.nhs.uk"), ("j.okafor@example.nhs.uk",),
         keep=("(0020,4000)",)),
    Case("street_and_postcode", _set("ImageComments", "home 14 Acacia Ave Ely CB7 4AA"), ("Acacia", "CB7 4AA"),
         keep=("(0020,4000)",)),
    Case("descriptor_with_doctor", _set("StudyDescription", "CT CHEST WITH CONTRAST - Dr Helen Brookes"),
         ("Helen", "Brookes")),
    Case("descriptor_with_surname_half", _set("StudyDescription", "CT OKAFOR CHEST"), ("OKAFOR",)),
    Case("descriptor_with_other_half", _set("SeriesDescription", "Warburton thorax"), ("Warburton",)),
    Case("descriptor_with_initials", _set("ProtocolName", "CHEST J Warburton-Okafor"), ("Warburton-Okafor",)),
    Case("descriptor_with_postcode", _set("RequestedProcedureDescription", "CT KUB LS1 3EX"), ("LS1 3EX",)),
    Case("descriptor_with_near_miss", _set("PerformedProcedureStepDescription", "CT for WARBURTN"), ("WARBURTN",)),
    Case("institution_part", lambda ds: (setattr(ds, "InstitutionName", INSTITUTION),
                                         setattr(ds, "AdmittingDiagnosesDescription", "Seen at Thornbury Vale A&E")),
         ("Thornbury Vale",), keep=("(0008,1080)",)),
    Case("occupation", _set("Occupation", "Taxidermist"), ("Taxidermist",), gate_can_see=False,
         keep=("(0010,2180)",)),
    Case("operator_identification", _operator_sequence, ("Ramanathan", "0113 496 0777", "Thornbury"),
         keep=("(0008,1072)", "(0040,1101)", "(0008,0080)", "(0040,1103)")),
    Case("verifying_observer", _verifying_observer, ("Adeyemi", "Olusegun"),
         keep=("(0040,A073)", "(0040,A075)", "(0040,A088)")),
    Case("institution_code_meaning", _institution_code, ("Thornbury",), keep=("(0008,0082)",)),
    Case("acquisition_context", _acquisition_context, ("Brookes",), keep=("(0040,0555)",)),
    Case("content_sequence", _content_sequence, ("Warburton", "943 476 5919"), keep=("(0040,A730)",)),
    Case("specimen_preparation", _specimen, ("Kowalski",), keep=("(0040,0610)", "(0040,0612)")),
    Case("person_names_outside_table", _pn_outside_table, ("Fairweather", "Lindqvist"),
         keep=("(0040,A067)", "(0014,0104)")),
    # Single-byte non-Latin character sets: the patient's name copied into a kept device value.
    Case("cyrillic_station", _station("Смирнова^Ольга", "Смирнова CT"), ("Смирнова",), charset="ISO_IR 144"),
    Case("greek_station", _station("Παπαδοπούλου^Ελένη", "Παπαδοπούλου"), ("Παπαδοπούλου",), charset="ISO_IR 126"),
    Case("arabic_station", _station("الحسيني^فاطمة", "الحسيني"), ("الحسيني",), charset="ISO_IR 127"),
    Case("hebrew_station", _station("כהן^רחל", "כהן"), ("כהן",), charset="ISO_IR 138"),
    Case("thai_station", _station("สมชาย^ใจดี", "สมชาย"), ("สมชาย",), charset="ISO_IR 166"),
    # Free text in a single-byte non-Latin set, kept only by a site: cleaning and the gate read it decoded.
    Case("cyrillic_comment", lambda ds: (setattr(ds, "PatientName", "Иванов^Пётр"),
                                         setattr(ds, "ImageComments", "Пациент Иванов")),
         ("Иванов",), charset="ISO_IR 144", keep=("(0020,4000)",)),
)


def build(case: Case) -> Dataset:
    """The CT slice of `case`, its identifier planted (no other free text)."""
    ds = make_ct_slice(PATIENT, plant=False)
    ds.InstitutionName = INSTITUTION
    if case.charset:
        ds.SpecificCharacterSet = case.charset
    case.plant(ds)
    return ds


def cases() -> Iterator[Case]:
    yield from CASES
