"""The release gate: nothing leaves unless its de-identified bytes were read back and found clean.

Two checks. `screen` refuses, before any work, what the profile cannot make safe (burned-in text,
encapsulated documents, SOP classes it does not know). `verify_output` reads the encoded output
back and searches every byte of it but the pixel data, and every decoded value at any depth, for
the identifying values of the source. Either returns a `Refusal` or None.
"""

from __future__ import annotations

import io
import re
import zlib

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from agent.deidentify import DeidentifiedInstance, Profile
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
_MULTIBYTE = ("ISO 2022", "ISO_IR 192", "GB18030", "GBK")


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


def verify_output(encoded: bytes, result: DeidentifiedInstance, profile: Profile) -> Refusal | None:
    """Read the output back and refuse it if anything identifying of the source is still in it."""
    try:
        stream = io.BytesIO(encoded)
        out = dcmread(stream, stop_before_pixels=True)
        header_end = stream.tell()
    except Exception as exc:  # pydicom raises many types; its message may quote values
        return Refusal(Reason.INVALID_OUTPUT, f"the output does not parse back ({type(exc).__name__})")
    if _needs_decoded_walk(out):
        found = _scan_elements(out, result)
    else:
        found = _scan_bytes(encoded, header_end, out, result)
    if found is not None:
        return Refusal(Reason.RESIDUAL_IDENTIFIER, found)
    return _identity_checks(out, result, profile)


def _header_bytes(encoded: bytes, header_end: int, out: Dataset) -> bytes:
    """The encoded bytes up to the pixel data, inflated when the transfer syntax is deflated."""
    if out.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return encoded[:header_end]
    meta_end = 132 + 12 + int(out.file_meta.get("FileMetaInformationGroupLength", 0))
    try:
        return encoded[:meta_end] + zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded[meta_end:])
    except zlib.error:
        return encoded


def _scan_bytes(encoded: bytes, header_end: int, out: Dataset, result: DeidentifiedInstance) -> str | None:
    """A fast pre-filter: only when the raw bytes match does the element walk have to decide."""
    if not result.identifiers.find_in_bytes(_header_bytes(encoded, header_end, out)):
        return None
    return _scan_elements(out, result)


def _needs_decoded_walk(out: Dataset) -> bool:
    """Multi-byte character sets encode names differently from UTF-8: search decoded values too."""
    charset = out.get("SpecificCharacterSet")
    text = "\\".join(charset) if isinstance(charset, (list, tuple)) or type(charset).__name__ == "MultiValue" else str(charset or "")
    return any(marker in text for marker in _MULTIBYTE)


def _scan_elements(out: Dataset, result: DeidentifiedInstance) -> str | None:
    located = _locate(out, result)
    return None if located is None else f"{located[1]} found in {located[0]}"


def _locate(ds: Dataset, result: DeidentifiedInstance, path: str = "") -> tuple[str, str] | None:
    """The path and label of the first element whose value holds an identifying value."""
    for elem in list(ds.file_meta.values()) + list(ds) if not path and hasattr(ds, "file_meta") else ds:
        where = f"{path}({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value or []):
                found = _locate(item, result, f"{where}[{index}] > ")
                if found:
                    return found
            continue
        value = elem.value
        if isinstance(value, bytes):
            pattern = result.identifiers.bytes_pattern
            match = pattern.search(value) if pattern is not None else None
            if match:
                return where, result.identifiers.label_of(match.group(0))
            text = value.decode("latin-1")
            if any(uid in text for uid in result.identifiers.uids):
                return where, "uid"
            continue
        texts = _texts(value)
        for text in texts:
            label = result.identifiers.find_in_text(text) if text else None
            if label and not (elem.VR == "CS" and label in _NAME_LABELS):
                return where, label
    return None


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
