"""The release gate: nothing leaves unless its de-identified bytes were read back and found clean.

Two checks. `screen` refuses, before any work, what the profile cannot make safe (burned-in text,
encapsulated documents, SOP classes it does not know). `verify_output` reads the encoded output
back and searches every decoded value at any depth, in the dataset's own character set, for the
identifying values of the source in every written form, and every text value with detectors
that do not depend on the source (a second opinion: a cleaning bug does not blind it). Either
returns a `Refusal` or None.
"""

from __future__ import annotations

import io
import re

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from agent.deidentify import DeidentifiedInstance, Profile
from agent.deidentify.plan import Op
from agent.detectors.scan import Mode, TextScanner
from agent.quarantine import Reason, Refusal

#: Modalities whose pixels usually carry burned-in text (ultrasound, secondary capture, external
#: camera, endoscopy, other). Refused until a pixel rule has masked them.
BURNED_IN_RISK_MODALITIES = frozenset({"US", "SC", "XC", "ES", "OT"})
_SECONDARY_CAPTURE = re.compile(r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.7(\.\d)?$")
_ENCAPSULATED = re.compile(r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.104\.\d+$")
ENCAPSULATED_DOCUMENT = 0x00420011
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# A coded string holds defined terms (PERFUSION, CHEST); a name that happens to be one is not a
# leak there. Every other identifier is still searched in coded strings.
_NAME_LABELS = frozenset({"patient_name", "person_name"})
#: Text VRs the detectors search (PN, LO, SH, ST, LT, UT, UC; code meanings are LO). Not UIDs (a
#: `2.25.` UID is full of digit runs that pass the NHS check), not dates or times (the shift
#: handles them), not numbers or coded strings.
_SEARCHED_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
_PROSE_VRS = frozenset({"PN", "LT", "ST", "UT"})
_MAX_BYTES_SEARCHED = 1 << 20  # binary values are searched in their first MiB


def screen(ds: Dataset, profile: Profile) -> Refusal | None:
    """Refuse, from the source's header alone, what no header rule can make safe."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if _ENCAPSULATED.match(sop_class) or ENCAPSULATED_DOCUMENT in ds:
        return Refusal(Reason.ENCAPSULATED_DOCUMENT, f"SOP class {sop_class}: documents are not de-identified")
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        return Refusal(Reason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES and no pixel rule masked it")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in BURNED_IN_RISK_MODALITIES:
        return Refusal(Reason.BURNED_IN_RISK, f"modality {modality} usually carries burned-in text; no pixel rule masked it")
    if _SECONDARY_CAPTURE.match(sop_class):
        return Refusal(Reason.BURNED_IN_RISK, "secondary capture (screen capture) with no pixel rule")
    image_type = "\\".join(str(v) for v in (ds.get("ImageType") or []) if v).upper()
    if "SCREEN SAVE" in image_type or "SCREENSHOT" in image_type:
        return Refusal(Reason.BURNED_IN_RISK, "ImageType says screen capture; no pixel rule masked it")
    if sop_class not in profile.sop_classes:
        return Refusal(Reason.UNKNOWN_SOP_CLASS, f"SOP class {sop_class or '(none)'} is not accepted by profile {profile.name}")
    return None


def verify_output(encoded: bytes, result: DeidentifiedInstance, profile: Profile, scanner: TextScanner) -> Refusal | None:
    """Read the output back and refuse it if anything identifying is still in it.

    Every value at any depth (file meta, sequences, private and unknown elements) is decoded in
    the dataset's own character set and searched twice: for the source's identifying values in
    every written form, and, in text, with the detectors that do not depend on the source.
    """
    try:
        stream = io.BytesIO(encoded)
        out = dcmread(stream, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types; its message may quote values
        return Refusal(Reason.INVALID_OUTPUT, f"the output does not parse back ({type(exc).__name__})")
    search = _Search(result, scanner, *search_modes(profile))
    try:
        refusal = search.dataset(out, "", _codecs(out, ["iso8859"]), top=True)
    except RecursionError:
        refusal = Refusal(Reason.INVALID_OUTPUT, "the output nests too deep to be searched")
    return refusal or _identity_checks(out, result, profile)


#: Device values, kept as the sender wrote them: a name lexicon word there is a product
#: (Manufacturer "Philips", a station called "HOLLY"), not a person. Every other detector still runs.
_DEVICE_ATTRIBUTES = frozenset({
    0x00080070, 0x00081090, 0x00081010, 0x00181000, 0x00181020, 0x00181016, 0x00181018, 0x00181019,
    0x00181004, 0x0018700A, 0x00181210, 0x00181160, 0x00181250, 0x00181251, 0x00185010, 0x00080080,
    0x00081040, 0x00080081, 0x00181030, 0x00540400, 0x00187004, 0x0018700C, 0x00181002, 0x00181008,
})  # fmt: skip
_DEVICE_RECIPES = ("deid.retain_device_identity", "deid.retain_institution_identity")
_modes: dict[int, tuple[frozenset[int], frozenset[int]]] = {}


def search_modes(profile: Profile) -> tuple[frozenset[int], frozenset[int]]:
    """(device attributes, cleaned attributes) of a profile: how much the detectors judge each.

    Device values the profile keeps are products, not people; attributes the profile cleans are
    free text, where a distinctive name alone is a leak.
    """
    key = id(profile.plan)
    if key not in _modes:
        exact = profile.plan.exact.items()
        kept = {tag for tag, action in exact if action.op is Op.KEEP and action.source in _DEVICE_RECIPES}
        cleaned = {tag for tag, action in exact if action.op in (Op.CLEAN, Op.VOCABULARY)}
        _modes[key] = (frozenset(kept) | _DEVICE_ATTRIBUTES, frozenset(cleaned))
    return _modes[key]


class _Search:
    """One walk over an output, refusing at the first identifying value."""

    def __init__(self, result: DeidentifiedInstance, scanner: TextScanner, device: frozenset[int],
                 cleaned: frozenset[int]) -> None:
        self.result = result
        self.identifiers = result.identifiers
        self.scanner = scanner
        self.device = device
        self.cleaned = cleaned
        self.pseudonyms = {result.patient_pseudonym.lower()}

    def dataset(self, ds: Dataset, path: str, codecs: list[str], *, top: bool = False) -> Refusal | None:
        sources = ([ds.file_meta] if top and hasattr(ds, "file_meta") else []) + [ds]
        for source in sources:
            for tag in list(source.keys()):
                where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
                try:
                    elem = source[tag]  # decoded in the dataset's character set
                except Exception as exc:  # pydicom raises many types; its message may quote values
                    return Refusal(Reason.INVALID_OUTPUT, f"{where} cannot be decoded ({type(exc).__name__})")
                refusal = self._searched(elem, where, codecs)
                if refusal:
                    return refusal
        return None

    def _searched(self, elem: DataElement, where: str, codecs: list[str]) -> Refusal | None:
        if elem.VR != "SQ":
            return self.element(elem, where, codecs)
        for index, item in enumerate(elem.value or []):
            refusal = self.dataset(item, f"{where}[{index}] > ", _codecs(item, codecs))
            if refusal:
                return refusal
        return None

    def element(self, elem: DataElement, where: str, codecs: list[str]) -> Refusal | None:
        vr = str(elem.VR)
        value = elem.value
        if isinstance(value, bytes):
            texts = _decodings(value, codecs)
            vr = "UN"
        else:
            texts = _texts(value)
        for text in texts:
            if not text:
                continue
            refusal = self._source(text, vr, elem.tag, where) or self._detectors(text, vr, elem.tag, where)
            if refusal:
                return refusal
        return None

    def _source(self, text: str, vr: str, tag: int, where: str) -> Refusal | None:
        for _start, _end, label in sorted(self.identifiers.spans(text)):
            if vr == "CS" and label.removeprefix("near_miss_") in _NAME_LABELS:
                continue  # a coded string holds defined terms: PERFUSION is not the patient Perfusion
            if label.removeprefix("near_miss_") == "institution" and self._mode(vr, tag, where) == "device":
                continue  # a hospital named after its scanner's maker ("TOSHIBA") is no leak in Manufacturer
            if label.startswith("near_miss_") and vr not in _SEARCHED_VRS:
                continue
            return Refusal(Reason.RESIDUAL_IDENTIFIER, f"{label} found in {where}")
        return None

    def _detectors(self, text: str, vr: str, tag: int, where: str) -> Refusal | None:
        if vr not in _SEARCHED_VRS or text.strip().lower() in self.pseudonyms:
            return None
        if any(ord(c) < 32 and c not in "\t\n\r\f\x1b" for c in text.rstrip("\x00 ")):
            return Refusal(Reason.INVALID_OUTPUT, f"control characters in {where}: a damaged value")
        found = self.scanner.first(text, self._mode(vr, tag, where))
        if found is not None:
            return Refusal(Reason.RESIDUAL_IDENTIFIER, f"{found.detector} found in {where}")
        return None


    def _mode(self, vr: str, tag: int, where: str) -> Mode:
        # Private creators name a vendor's block ("GEMS_SERS_01"): a product, like a device value.
        if tag in self.device or (tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF):
            return "device"
        if vr in _PROSE_VRS or tag in self.cleaned or " > " in where:
            return "prose"  # free text, person names, what the profile cleans, text inside items
        return "kept"


def _codecs(ds: Dataset, inherited: list[str]) -> list[str]:
    """The Python codecs of a dataset's Specific Character Set, or its parent's."""
    declared = ds.get("SpecificCharacterSet") if "SpecificCharacterSet" in ds else None
    if not declared:
        return inherited
    try:
        return list(convert_encodings(declared))
    except Exception:  # an unknown character set: the value is searched as Latin-1 and UTF-8
        return inherited


def _decodings(value: bytes, codecs: list[str]) -> list[str]:
    """Binary or unknown bytes, read every way the dataset could have written text into them."""
    value = value[:_MAX_BYTES_SEARCHED]
    out = {value.decode("latin-1"), value.decode("utf-8", "replace")}
    for codec in codecs:
        try:
            out.add(value.decode(codec, "replace"))
        except LookupError:
            continue
    return sorted(out)


def _texts(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]  # type: ignore[attr-defined]
    return [str(value)]


def _identity_checks(out: Dataset, result: DeidentifiedInstance, profile: Profile) -> Refusal | None:
    """What must hold of every output, whatever the identifiers were."""
    if str(out.get("PatientIdentityRemoved", "")) != "YES":
        return Refusal(Reason.INVALID_OUTPUT, "PatientIdentityRemoved is not YES")
    for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID"):
        value = str(out.get(keyword, "") or "").strip().lower()
        if value and value == result.source_patient_id.lower():
            return Refusal(Reason.RESIDUAL_IDENTIFIER, f"patient_id found in {keyword}")
        if value and value in result.identifiers.exact_ids:
            return Refusal(Reason.RESIDUAL_IDENTIFIER, f"{result.identifiers.exact_ids[value]} found in {keyword}")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = str(out.get(keyword, "") or "")
        if not _UID.match(uid) or len(uid) > 64:
            return Refusal(Reason.INVALID_OUTPUT, f"{keyword} is missing or not a valid UID")
        if not profile.uids_kept and uid in result.uid_map:
            return Refusal(Reason.RESIDUAL_IDENTIFIER, f"original {keyword} kept")
    if str(out.file_meta.get("MediaStorageSOPInstanceUID", "")) != str(out.get("SOPInstanceUID", "")):
        return Refusal(Reason.INVALID_OUTPUT, "file meta and dataset disagree on the SOP Instance UID")
    return None
