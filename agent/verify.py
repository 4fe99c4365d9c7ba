"""The release gate: nothing leaves unless its de-identified bytes were read back and found clean.

Two checks. `screen` refuses, before any work, what the profile cannot make safe (burned-in text,
encapsulated documents, SOP classes it does not know). `verify_output` reads the encoded output
back and searches every decoded value at any depth, in the dataset's own character set, for the
identifying values of the source in every written form, and every text value with detectors
that do not depend on the source (a second opinion: a cleaning bug does not blind it). Either
returns a `Refusal` or None.
"""

from __future__ import annotations

import bisect
import io
import re
import struct

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from agent.deidentify import DeidentifiedInstance, Profile, burnedin, masking, ocr, pixels
from agent.deidentify.burnedin import PixelDecision, boxes_text
from agent.deidentify.plan import Op, Plan
from agent.detectors.scan import Mode, TextScanner
from agent.elements import Unsure, walk
from agent.quarantine import Reason, Refusal

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
_WORD = re.compile(r"[^\W_]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # control characters text may not hold (PS3.5 6.1.2)
_DOTTED = re.compile(r"\d+\.\d+\.\d+")
_DOTTED_UID = re.compile(r"\d+(?:\.\d+){3,}")
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV", "US or SS"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW", "US or SS or OW"})


def screen(ds: Dataset, profile: Profile, decision: PixelDecision | None = None) -> Refusal | None:
    """Refuse, from the source's header alone, what the profile cannot make safe: documents,
    classes it does not know, and images at risk of burned-in text that no pixel rule or OCR
    can clean (`decision`: the pixel decision already made for this source, if it was)."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if _ENCAPSULATED.match(sop_class) or ENCAPSULATED_DOCUMENT in ds:
        return Refusal(Reason.ENCAPSULATED_DOCUMENT, f"SOP class {sop_class}: documents are not de-identified")
    decision = decision or burnedin.decide(ds, profile)
    if decision.refusal is not None:
        return decision.refusal
    if sop_class not in profile.sop_classes:  # scope (agent/deidentify/scope.py) excludes valid ones first
        return Refusal(Reason.UNKNOWN_SOP_CLASS, "SOP Class UID missing or not a UID" if not sop_class or
                       not _UID.match(sop_class) else f"SOP class {sop_class} is not accepted by profile {profile.name}")
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
    if _pixel_data_too_long(encoded, stream.tell(), out):
        return Refusal(Reason.INVALID_OUTPUT, "Pixel Data is longer than its image: bytes after the frames")
    search = _Search(result, scanner, *search_modes(profile))
    codecs = _codecs(out, ["iso8859"])
    try:
        try:
            refusal = search.collect_raw(encoded, codecs)
        except Unsure:  # another transfer syntax, non-ASCII text, a shape the walk leaves to pydicom
            search.entries.clear()
            refusal = search.collect(out, "", codecs, top=True)
        refusal = refusal or search.verdict()
    except RecursionError:
        refusal = Refusal(Reason.INVALID_OUTPUT, "the output nests too deep to be searched")
    return refusal or _identity_checks(out, result, profile)


def verify_pixels(encoded: bytes, result: DeidentifiedInstance, profile: Profile,
                  cleaner: burnedin.PixelCleaner) -> Refusal | None:
    """OCR the output's pixels again, if the image was at risk of burned-in text and the profile
    reads text: any identifying word still readable refuses it. What is read is the encoded
    output, decoded afresh, not what the cleaning step believes it wrote."""
    report = result.pixels
    if report is None or report.risk is None or not profile.pixels.ocr:
        return None
    try:
        out = dcmread(io.BytesIO(encoded))
        report.gate_frames, report.gate_hits, _ = cleaner.read(out, result.identifiers, report.every_frame)
    except masking.PixelsUndecodable as exc:
        return Refusal(Reason.PIXELS_UNDECODABLE, f"the output's pixels cannot be read back: {exc}")
    except ocr.OcrUnavailable as exc:
        return Refusal(Reason.BURNED_IN_RISK, f"{report.risk.detail}; the gate cannot read its pixels: {exc}")
    if not report.gate_hits:
        return None
    frames = sorted({hit.frame for hit in report.gate_hits})
    labels = sorted({hit.label for hit in report.gate_hits})
    boxes = [hit.box for hit in report.gate_hits]
    return Refusal(Reason.BURNED_IN_TEXT, f"OCR still reads {', '.join(labels)} in frame(s) "
                   f"{', '.join(str(f) for f in frames[:8])} at {boxes_text(boxes)}")


#: Device values, kept as the sender wrote them: a name lexicon word there is a product
#: (Manufacturer "Philips", a station called "HOLLY"), not a person. Every other detector still runs.
_DEVICE_ATTRIBUTES = frozenset({
    0x00080070, 0x00081090, 0x00081010, 0x00181000, 0x00181020, 0x00181016, 0x00181018, 0x00181019,
    0x00181004, 0x0018700A, 0x00181210, 0x00181160, 0x00181250, 0x00181251, 0x00185010, 0x00080080,
    0x00081040, 0x00080081, 0x00181030, 0x00540400, 0x00187004, 0x0018700C, 0x00181002, 0x00181008,
})  # fmt: skip
_DEVICE_RECIPES = ("deid.retain_device_identity", "deid.retain_institution_identity")
_modes: dict[int, tuple[Plan, tuple[frozenset[int], frozenset[int], frozenset[int]]]] = {}
_VERIFIED_PATIENTS = 64  # bounds on TextScanner.verified, the values the gate found clean
_VERIFIED_VALUES = 200_000


def search_modes(profile: Profile) -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """(device attributes, cleaned attributes, kept attributes) of a profile: how much the
    detectors judge each.

    Device values the profile keeps are products, not people; attributes the profile cleans are
    free text, where a distinctive name alone is a leak; what a line keeps (K) may hold a value the
    profile removes elsewhere. Worked out once per plan; the cache holds the plan itself, since an
    id can be reused once a plan is gone.
    """
    cached = _modes.get(id(profile.plan))
    if cached is None or cached[0] is not profile.plan:
        exact = profile.plan.exact.items()
        device = {tag for tag, action in exact if action.op is Op.KEEP and action.source in _DEVICE_RECIPES}
        cleaned = {tag for tag, action in exact if action.op in (Op.CLEAN, Op.VOCABULARY)}
        kept = {tag for tag, action in exact if action.op is Op.KEEP}
        cached = _modes[id(profile.plan)] = (profile.plan, (frozenset(device) | _DEVICE_ATTRIBUTES,
                                                            frozenset(cleaned), frozenset(kept)))
    return cached[1]


class _Search:
    """One search of an output: every value is collected by one walk, then searched in bulk.

    The source's identifiers are one pattern run once over all values joined; the detectors run
    per text value (cached by text). The refusal names the first value in walk order that holds
    anything, whichever search found it.
    """

    def __init__(self, result: DeidentifiedInstance, scanner: TextScanner, device: frozenset[int],
                 cleaned: frozenset[int], kept: frozenset[int]) -> None:
        self.kept = kept
        self.identifiers = result.identifiers
        self.scanner = scanner
        self.device = device
        self.cleaned = cleaned
        self.pseudonym = result.patient_pseudonym.lower()
        self.new_uids = frozenset(result.uid_map.values())
        self.entries: list[tuple[str, int, str, str]] = []  # (vr, tag, path of the parent, text)

    def collect_raw(self, encoded: bytes, codecs: list[str]) -> Refusal | None:
        """`collect` from the raw bytes of an explicit VR little endian output with ASCII text:
        the same values, without building a pydicom Dataset for every sequence item."""
        for element in list(walk(encoded)):
            tag, vr, path, value = element
            if vr in _NUMBER_VRS:
                refusal = self._numbers(vr, tag, path, value, codecs)
                if refusal:
                    return refusal
                continue
            if vr in _BYTES_VRS:
                self._add("UN", tag, path, _decodings(value, codecs))
                continue
            if (tag == 0x00080005 and path) or not value.isascii() or b"\x1b" in value:
                raise Unsure  # an item's own character set, or text to decode in the dataset's: pydicom's job
            self._add(vr, tag, path, value.decode("ascii").strip("\x00 ").split("\\"))
        return None

    def collect(self, ds: Dataset, path: str, codecs: list[str], *, top: bool = False) -> Refusal | None:
        """Every value of `ds` at any depth, decoded; a refusal only for a value that cannot be."""
        sources = ([ds.file_meta] if top and hasattr(ds, "file_meta") else []) + [ds]
        for source in sources:
            for tag in list(source.keys()):
                raw = source.get_item(tag)
                raw_vr = getattr(raw, "VR", None) or _dictionary_vr(tag)  # implicit VR: the dictionary's
                if raw_vr in _NUMBER_VRS and isinstance(raw.value, bytes):
                    refusal = self._numbers(str(raw_vr), tag, path, raw.value, codecs)
                    if refusal:
                        return refusal
                    continue
                if raw_vr in _BYTES_VRS and isinstance(raw.value, bytes):
                    self._add("UN", tag, path, _decodings(raw.value, codecs))
                    continue
                text = _plain_text(raw)
                if text is not None:
                    # Plain ASCII text reads the same in every character set: no need for pydicom's
                    # conversion, which is most of the cost of searching an output.
                    self._add(str(raw_vr), tag, path, text.split("\\"))
                    continue
                try:
                    elem = source[tag]  # decoded in the dataset's character set
                except Exception as exc:  # pydicom raises many types; its message may quote values
                    where = f"{path}{_tag_text(tag)}"
                    return Refusal(Reason.INVALID_OUTPUT, f"{where} cannot be decoded ({type(exc).__name__})")
                if elem.VR == "SQ":
                    for index, item in enumerate(elem.value or []):
                        refusal = self.collect(item, f"{path}{_tag_text(tag)}[{index}] > ", _codecs(item, codecs))
                        if refusal:
                            return refusal
                elif isinstance(elem.value, bytes):
                    self._add("UN", tag, path, _decodings(elem.value, codecs))
                elif elem.VR not in _NUMBER_VRS:  # numbers read as numbers hold no text
                    self._add(str(elem.VR), tag, path, _texts(elem.value))
        return None

    def _numbers(self, vr: str, tag: int, path: str, value: bytes, codecs: list[str]) -> Refusal | None:
        """Binary numbers hold no text, unless a damaged length made one swallow the elements after
        it: longer than its value multiplicity allows, or than any real list of such numbers in a
        header (then its bytes are searched too)."""
        where = f"{path}{_tag_text(tag)}"
        if len(value) > _longest_number(tag, vr):
            return Refusal(Reason.INVALID_OUTPUT, f"{where} is longer than its value multiplicity allows: a damaged length")
        if len(value) > _SEARCHED_NUMBER_BYTES:
            if _DOTTED_UID.search(value.decode("latin-1")):
                return Refusal(Reason.INVALID_OUTPUT, f"text inside the numbers of {where}: a damaged length")
            self._add("UN", tag, path, _decodings(value, codecs))
        return None

    def _add(self, vr: str, tag: int, path: str, texts: list[str]) -> None:
        for text in texts:
            if text and not (vr == "UI" and text in self.new_uids):  # UIDs this agent made hold nothing
                self.entries.append((vr, tag, path, text))

    def verdict(self) -> Refusal | None:
        """The refusal for the first value, in walk order, that holds anything identifying.

        A value already found clean in an earlier instance with the same source identifiers (the
        same patient: most values of a study repeat) is not searched again, but for original
        UIDs, which differ from instance to instance.
        """
        fingerprint = frozenset(self.identifiers.values)
        verified = self.scanner.verified  # per profile: its vocabulary and modes decide what is clean
        known = verified.setdefault(fingerprint, set())
        # (VR, tag, inside an item, value) decides everything the searches judge by.
        keys = [(vr, tag, bool(path), text) for vr, tag, path, text in self.entries]
        pending = [i for i, key in enumerate(keys) if key not in known]
        best: tuple[int, Refusal] | None = None
        for found in (self._source_identifiers(pending), self._in_bulk(self.identifiers.id_pattern, pending),
                      self._unspaced(pending), self._original_uids(), self._near_misses(pending)):
            if found is not None and (best is None or found[0] < best[0]):
                best = found
        detected = self._detectors(pending, best[0] if best else len(self.entries))
        if detected is not None:
            best = detected
        if best is not None:
            return best[1]
        if len(verified) > _VERIFIED_PATIENTS or len(known) > _VERIFIED_VALUES:
            verified.clear()
            known = verified.setdefault(fingerprint, set())
        known.update(keys)
        return None

    def _where(self, index: int) -> str:
        _vr, tag, path, _text = self.entries[index]
        return f"{path}{_tag_text(tag)}"

    def _hit(self, index: int, label: str) -> tuple[int, Refusal] | None:
        vr, tag, path, _text = self.entries[index]
        base = label.removeprefix("near_miss_")
        if vr == "CS" and base in _NAME_LABELS:
            return None  # a coded string holds defined terms: PERFUSION is not the patient Perfusion
        if base == "removed_value" and tag in self.kept:
            return None  # the profile keeps this value here and removes it elsewhere: its choice
        if base in ("institution", "removed_value") and self._mode(vr, tag, path) == "device":
            return None  # a hospital named after its scanner's maker ("TOSHIBA") is no leak in Manufacturer
        return index, Refusal(Reason.RESIDUAL_IDENTIFIER, f"{label} found in {self._where(index)}")

    def _in_bulk(self, pattern: re.Pattern[str] | None, indexes: list[int]) -> tuple[int, Refusal] | None:
        """Run `pattern` once over the values at `indexes`, joined by NUL (a word boundary, in no value)."""
        if pattern is None or not indexes:
            return None
        starts, parts, offset = [], [], 0
        for index in indexes:
            starts.append(offset)
            parts.append(self.entries[index][3])
            offset += len(parts[-1]) + 1
        for match in pattern.finditer("\x00".join(parts)):
            index = indexes[bisect.bisect_right(starts, match.start()) - 1]
            hit = self._hit(index, self.identifiers.label_of(match.group(0)))
            if hit is not None:
                return hit
        return None

    def _source_identifiers(self, pending: list[int]) -> tuple[int, Refusal] | None:
        return self._in_bulk(self.identifiers.text_pattern, pending)

    def _unspaced(self, pending: list[int]) -> tuple[int, Refusal] | None:
        indexes = [i for i in pending if not self.entries[i][3].isascii()]
        return self._in_bulk(self.identifiers.unspaced_pattern if indexes else None, indexes)

    def _original_uids(self) -> tuple[int, Refusal] | None:
        for index, (_vr, _tag, _path, text) in enumerate(self.entries):
            if len(text) >= 7 and "." in text and self.identifiers.holds_uid(text):
                return self._hit(index, "uid")
        return None

    def _near_misses(self, pending: list[int]) -> tuple[int, Refusal] | None:
        """Words one character away from a source identifier, in text values."""
        words: dict[str, int] = {}
        for index in pending:
            vr, _tag, _path, text = self.entries[index]
            if vr in _SEARCHED_VRS:
                for word in _WORD.findall(text):
                    if len(word) >= 5:
                        words.setdefault(word.lower(), index)
        hits = [(index, label) for word, index in words.items()
                if (label := self.identifiers.near_miss(word)) is not None]
        for index, label in sorted(hits):
            hit = self._hit(index, label)
            if hit is not None:
                return hit
        return None

    def _detectors(self, pending: list[int], before: int) -> tuple[int, Refusal] | None:
        """The detectors over each text value before index `before` (a later hit would not be first)."""
        for index in pending:
            if index >= before:
                break
            vr, tag, path, text = self.entries[index]
            if vr in _ASCII_TEXT_VRS and _CONTROL.search(text.rstrip("\x00 ")):
                # Text may not hold these (PS3.5 6.1.2): a damaged length made it swallow other elements.
                return index, Refusal(Reason.INVALID_OUTPUT, f"control characters in {self._where(index)}: a damaged value")
            if vr in ("DS", "IS") and _DOTTED.search(text):
                # A UID where a number belongs: a damaged tag moved it here, unremapped.
                return index, Refusal(Reason.INVALID_OUTPUT, f"a UID in the number {self._where(index)}: a damaged value")
            if vr not in _SEARCHED_VRS or text.strip(" ^").lower() == self.pseudonym:
                continue
            if tag in _AGENT_WRITTEN or path.startswith(_AGENT_WRITTEN_SEQUENCE):
                continue  # the agent's own marking (its version, the key id's hex): no person in it
            found = self.scanner.first(text, self._mode(vr, tag, path))
            if found is not None:
                return index, Refusal(Reason.RESIDUAL_IDENTIFIER, f"{found.detector} found in {self._where(index)}")
        return None

    def _mode(self, vr: str, tag: int, path: str) -> Mode:
        # Private creators name a vendor's block ("GEMS_SERS_01"): a product, like a device value.
        if tag in self.device or (tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF):
            return "device"
        if vr in _PROSE_VRS or tag in self.cleaned or path:
            return "prose"  # free text, person names, what the profile cleans, text inside items
        return "kept"


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_ASCII_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                             "UI", "UR", "UT"})


_SEARCHED_NUMBER_BYTES = 64
# What de-identification writes itself (PS3.15 E.1.1): Patient Identity Removed, De-identification
# Method (agent version, profile, edition, key id) and its code sequence, Longitudinal Temporal
# Information Modified. A key id's hex digits can look like a phone number.
_AGENT_WRITTEN = frozenset({0x00120062, 0x00120063, 0x00280303})
_AGENT_WRITTEN_SEQUENCE = "(0012,0064)"


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


_NUMBER_SIZE = {"US": 2, "SS": 2, "US or SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


def _longest_number(tag: int, vr: str) -> int:
    """The most bytes a binary number element may hold: its VR's size times its largest VM."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return 1 << 31  # unknown: nothing to compare with
    high = vm.split("-")[-1]
    if not high.isdigit():
        return 1 << 31  # "1-n", "2-2n": any length
    return int(high) * _NUMBER_SIZE.get(vr, 8)


def _plain_text(raw: object) -> str | None:
    """The value of a raw text element whose bytes are plain ASCII, or None to let pydicom decode."""
    if not isinstance(raw, RawDataElement) or raw.VR not in _ASCII_TEXT_VRS or not isinstance(raw.value, bytes):
        return None
    value = raw.value
    if not value.isascii() or b"\x1b" in value:
        return None
    return value.decode("ascii").strip("\x00 ")


def _pixel_data_too_long(encoded: bytes, offset: int, out: Dataset) -> bool:
    """Whether native Pixel Data, read from its element header, is longer than the image it holds."""
    syntax = out.file_meta.get("TransferSyntaxUID")
    if syntax is None or UID(syntax).is_deflated or UID(syntax).is_encapsulated:
        return False
    little = UID(syntax).is_little_endian
    header = encoded[offset : offset + 12]
    if len(header) < 8:
        return False
    group, element = struct.unpack("<HH" if little else ">HH", header[:4])
    if (group, element) != (0x7FE0, 0x0010):
        return False
    if UID(syntax).is_implicit_VR:
        (length,) = struct.unpack("<L" if little else ">L", header[4:8])
    elif len(header) == 12:
        (length,) = struct.unpack("<L" if little else ">L", header[8:12])
    else:
        return False
    expected = pixels.expected_length(out)
    return length != 0xFFFFFFFF and expected is not None and length > expected


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
