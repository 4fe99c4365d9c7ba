"""Executing a compiled plan on one dataset, in one pass, at every depth.

Elements the plan keeps are never decoded: pydicom writes them back from their raw bytes, which is
most of what makes this faster than walking a fully decoded dataset.
"""

from __future__ import annotations

import functools
import io
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_sequence
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from agent import __version__
from agent.deidentify import dates, pixels, text
from agent.deidentify.identifiers import SourceIdentifiers, collect
from agent.deidentify.plan import Action, Op
from agent.deidentify.profile import EDITION, METHOD_CODES, Profile
from agent.deidentify.pseudonym import Pseudonymiser
from agent.detectors.scan import TextScanner
from agent.keys import SiteKey
from agent.limits import LimitExceeded, Limits
from agent.quarantine import Reason, Refusal

if TYPE_CHECKING:
    from agent.deidentify.burnedin import PixelReport

PIXEL_DATA = 0x7FE00010
PATIENT_ID = 0x00100020
SOP_INSTANCE_UID = 0x00080018
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:nmip-agent").int)
IMPLEMENTATION_VERSION_NAME = ("NMIP_" + __version__.replace(".", "_"))[:16]

_RAW_SAFE_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_ASCII_VRS = {"AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
# The PN dummy carries its component delimiter (a PN without `^` is the retired form).
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED^",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UR": "urn:anonymized",
    "UT": "ANONYMIZED", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0,
    "AT": 0, "US or SS": 0,
}  # fmt: skip
_NO_OP = Action(Op.KEEP, "not in profile")
_OVERLAY_REMOVED = Action(Op.REMOVE, "overlay data removed")
_CLEAN_NESTED = Action(Op.CLEAN, "not in profile, inside a sequence")
_UNKNOWN_REMOVED = Action(Op.REMOVE, "unknown to the dictionary")
_VR_DIFFERS_REMOVED = Action(Op.REMOVE, "its VR is not the dictionary's: a damaged element")
_WORDS = re.compile(r"[^\W_]+")
# Text VRs whose length is bounded by limits.max_value_bytes (a 10 MB Patient's Name costs gigabytes
# in any text processing); binary values are bounded by the instance's size and the worker's memory.
_SHORT_VALUE = 256  # bytes: a value this short is counted without looking its VR up
_TEXT_LIMITED_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_REMEMBERED_VRS = {"LO", "SH", "PN", "LT", "ST", "UT", "UC", "AE"}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DUMMY_ITEM = Action(Op.DUMMY, "inside a dummied sequence item")
_KEPT_IN_ITEM = Action(Op.KEEP, "a number inside a dummied sequence item")
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "AT", "SV", "UV", "US or SS"}
# X/Z sequences that are Type 3 at the top level and in a Request Attributes item: zero items is
# invalid for a Type 3 sequence (dciodvfy: "Bad Sequence number of Items"), so X is the valid choice.
_REMOVED_WHEN_BLANKED = {0x00081110}  # Referenced Study Sequence (General Study Module, Request Attributes)
_REQUEST_ATTRIBUTES_ITEM = re.compile(r"\(0040,0275\)\[\d+\] > $")
_FREE_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian: how a UN sequence starts


# PS3.5 Table 6.2-1: the longest value of each text VR, in characters.
_MAX_LENGTH = {"AE": 16, "CS": 16, "LO": 64, "SH": 16, "PN": 64 * 5, "ST": 1024, "LT": 10240, "UC": 2**32 - 2}


def _fit(value: str, vr: str) -> str:
    """A cleaned value cut to its VR's length (a damaged source can be longer than its VR allows)."""
    limit = _MAX_LENGTH[vr]
    return "\\".join(v[:limit].rstrip() for v in value.split("\\"))


class Refused(Exception):
    """The instance cannot be de-identified safely; `reason` is a quarantine reason code."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason.value}: {refusal.detail}")
        self.refusal = refusal


@dataclass
class Change:
    """One attribute's fate, for the dry-run report. Holds source values: stays on site."""

    path: str
    keyword: str
    action: str
    before: str
    after: str | None  # None: removed


@dataclass
class DeidentifiedInstance:
    """The result of de-identifying one dataset (modified in place) and what the gate needs."""

    dataset: Dataset
    source_patient_id: str
    patient_pseudonym: str
    identifiers: SourceIdentifiers
    uid_map: dict[str, str] = field(default_factory=dict)
    changes: list[Change] | None = None
    pixels: PixelReport | None = None  # set when the pixels were looked at (risk, rules, OCR)


@dataclass
class _Context:
    offset: timedelta
    patient_pseudonym: str
    identifiers: SourceIdentifiers
    uid_map: dict[str, str]
    changes: list[Change] | None
    mutations: int = 0  # counts every change, so an untouched sequence can keep its raw bytes
    elements: int = 0  # elements and values met in items so far (limits.max_elements)
    removed: list[str] = field(default_factory=list)  # text the profile took away, for the gate


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """Set a value; ASCII text goes in already encoded, as a raw element.

    pydicom writes a raw element as its bytes, but encodes a DataElement through several layers
    of Python per element: for the handful of values de-identification sets in every instance,
    that was a third of the encoding time.
    """
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = "\\".join(value)
    if isinstance(value, str) and vr in _RAW_SAFE_VRS and value.isascii():
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)
    else:
        ds[tag] = DataElement(tag, vr, value)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@functools.lru_cache(maxsize=4096)
def _known(tag: int) -> bool:
    """Whether pydicom's dictionary (repeating groups included) knows this public tag."""
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


@functools.lru_cache(maxsize=8192)
def _vr_differs(vr: str, tag: int) -> bool:
    """Whether an explicit VR contradicts the dictionary's for a known public tag.

    Text VRs stand in for each other in real files (LO for SH, UT for LT) and so do the binary
    ones (OB, OW, UN): only a VR of another kind, such as UI where a number belongs or LO where a
    code string belongs, counts.
    """
    try:
        expected = str(dictionary_VR(tag))
    except KeyError:
        return False
    if vr == expected or vr == "UN" or " or " in expected or expected == "UN":
        return False
    return _VR_KIND.get(vr, vr) != _VR_KIND.get(expected, expected)


_VR_KIND = {
    **dict.fromkeys(("LO", "SH", "ST", "LT", "UT", "UC", "PN"), "text"),  # CS, AE, UR: kinds of their own
    **dict.fromkeys(("OB", "OW", "OD", "OF", "OL", "OV"), "binary"),
    **dict.fromkeys(("US", "SS", "UL", "SL", "SV", "UV"), "integer"),
    **dict.fromkeys(("DS", "IS"), "decimal"),
    **dict.fromkeys(("FL", "FD"), "float"),
}


def _vr_of(elem: DataElement | RawDataElement, tag: int) -> str:
    """The element's VR, from the dictionary when the file (implicit VR) or the sender (UN) did not say."""
    vr = elem.VR
    if vr is None or (vr == "UN" and not tag >> 16 & 1):
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return "UN"
    return str(vr)


class Deidentifier:
    """Applies one profile with one key; build it once per process and reuse it for every instance."""

    def __init__(self, profile: Profile, key: SiteKey, *, clean_text: bool = True, limits: Limits = Limits()) -> None:
        """`clean_text=False` keeps text that cleaning would change: only for testing the gate alone."""
        self.profile = profile
        self.limits = limits
        self.plan = profile.plan
        self.clean_text = clean_text
        self.scanner = TextScanner(profile.vocabulary)
        self.pseudonyms = Pseudonymiser(key, profile.pseudonym)
        self.key_id = key.key_id
        self._codes: dict[tuple[bool, bool, bool], RawDataElement] = {}
        self._method = [
            f"nmip-agent {__version__}",
            f"profile {profile.name} {profile.version}",
            f"PS3.15 {EDITION}",
            f"key {self.key_id}",
        ]

    def deidentify(self, ds: Dataset, *, record: bool = False) -> DeidentifiedInstance:
        """De-identify `ds` in place; `record` keeps a per-attribute report for `check`."""
        source_patient_id = str(ds.get(PATIENT_ID).value or "").strip(" \x00") if PATIENT_ID in ds else ""
        if not source_patient_id:
            raise Refused(Refusal(Reason.NO_PATIENT_ID, "the instance has no Patient ID to derive a pseudonym from"))
        if _CONTROL.search(source_patient_id):
            # A damaged Patient ID would make a pseudonym of its own and hide the real one elsewhere.
            raise Refused(Refusal(Reason.NO_PATIENT_ID, "the Patient ID holds control characters (a damaged value)"))
        identifiers = collect(ds, include_dates=not self.profile.dates_kept,
                              include_institution=not self.profile.institution_kept)
        ctx = _Context(
            offset=self.pseudonyms.date_offset(source_patient_id),
            patient_pseudonym=self.pseudonyms.patient_pseudonym(source_patient_id),
            identifiers=identifiers,
            uid_map={},
            changes=[] if record else None,
        )
        self._walk(ds, ctx, "", top=True)
        for removed in ctx.removed:  # added once the walk is over: each addition recompiles the patterns
            if not self._imaging_words(removed):
                identifiers.add_removed(removed)
        self._trim_pixel_data(ds, ctx)
        self._add(ds, ctx)
        self._mark(ds)
        self._file_meta(ds, ctx)
        return DeidentifiedInstance(
            dataset=ds,
            source_patient_id=source_patient_id,
            patient_pseudonym=ctx.patient_pseudonym,
            identifiers=identifiers,
            uid_map=ctx.uid_map,
            changes=ctx.changes,
        )

    # -- the walk ---------------------------------------------------------------------------

    def check_limits(self, ds: Dataset) -> None:
        """The limits on the top level, before anything reads its values (the screen included):
        call it before `deidentify`, which checks the items as it walks into them."""
        self._check_values(ds, top=True)

    def _check_values(self, ds: Dataset, *, top: bool = False, depth: int = 0) -> int:
        """Refuse, before any work on them, values and element counts no real object has.

        Returns the number of elements and values counted in `ds` (not in its sequences). Cheap:
        the raw elements as read (`Dataset.values()` converts nothing), a VR looked up only for a
        long value.
        """
        if depth > self.limits.max_depth:
            raise LimitExceeded("max_depth", f"sequences nested more than {self.limits.max_depth} deep")
        limits = self.limits
        counted = 0
        for raw in ds.values():
            counted += 1
            value: Any = raw.value
            values_counted = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
            if values_counted:
                counted += len(value)  # already read (by the screen)
                if counted > limits.max_elements:
                    break
                value = "\\".join(str(v) for v in value)
            if not isinstance(value, (bytes, str)):
                continue
            if len(value) > _SHORT_VALUE:
                if _vr_of(raw, int(raw.tag)) not in _TEXT_LIMITED_VRS:
                    continue  # binary: not text, its 0x5C bytes are no value delimiters
                if len(value) > limits.max_value_bytes:
                    raise LimitExceeded("max_value_bytes", f"a value of {len(value)} bytes")
            if not values_counted:
                counted += value.count(b"\\") if isinstance(value, bytes) else value.count("\\")
        if counted > limits.max_elements:
            raise LimitExceeded("max_elements", f"more than {limits.max_elements} elements and values")
        return counted

    def _walk(self, ds: Dataset, ctx: _Context, path: str, *, top: bool = False, dummy: bool = False,
              depth: int = 0) -> None:
        """Apply the plan to every element of `ds`, recursing into the sequences it keeps.

        `dummy`: `ds` is the one item a D sequence keeps; what no row names in it is dummied.
        """
        if not top:
            ctx.elements += self._check_values(ds, depth=depth)
            if ctx.elements > self.limits.max_elements:
                raise LimitExceeded("max_elements", f"more than {self.limits.max_elements} elements and values")
        plan = self.plan
        creators: dict[tuple[int, int], str] = {}
        temporal: dict[int, tuple[str, Action]] = {}
        tags = [int(t) for t in ds.keys()]
        removed_overlays = self._overlay_groups_removed(tags)
        for tag in tags:
            group, element = tag >> 16, tag & 0xFFFF
            if element == 0 or tag > PIXEL_DATA:
                # Group lengths are retired and recomputed; nothing may hide after the pixel data
                # (in an item too, after an icon image's own).
                self._remove(ds, tag, ctx, path, Action(Op.REMOVE, "nmip-agent"))
                continue
            if group in removed_overlays:
                self._remove(ds, tag, ctx, path, _OVERLAY_REMOVED)
                continue
            if group & 1:
                if element < 0x10:  # (gggg,0001-000F) is not valid in a private group: nothing to keep
                    self._remove(ds, tag, ctx, path, Action(Op.REMOVE, "invalid private element"))
                    continue
                if element <= 0xFF:
                    creators[(group, element)] = self._text(ds, tag)
                    continue  # creators are decided once their blocks are known
                action = plan.private_action(tag, creators.get((group, element >> 8)))
            else:
                action = plan.public_action(tag)
                if action is None and not _known(tag):
                    # A public tag no dictionary knows and no line names: what it holds cannot be
                    # judged (a damaged tag moves a UID or a name there), so it goes.
                    self._remove(ds, tag, ctx, path, _UNKNOWN_REMOVED)
                    continue
            elem = ds.get_item(tag)
            vr = _vr_of(elem, tag)
            if not group & 1 and action is None and _vr_differs(vr, tag):
                # The file says one VR, the dictionary another: a damaged tag moved this value
                # here (a UID into a number). Unnamed, it would be kept as it came.
                self._remove(ds, tag, ctx, path, _VR_DIFFERS_REMOVED)
                continue
            if vr == "UN" and not (action is not None and action.op is Op.REMOVE):
                # Unknown to the dictionary (implicit VR, or a sender's UN): walked where it parses
                # as a sequence, removed otherwise unless the profile keeps it.
                if self._un_as_sequence(ds, tag):
                    vr = "SQ"
                elif action is None or action.op is not Op.KEEP:
                    self._remove(ds, tag, ctx, path, action or _UNKNOWN_REMOVED)
                    continue
            if action is None:
                action = plan.vr_action(vr)
            if action is None:
                # Inside a sequence, text the profile does not name is cleaned rather than kept:
                # PS3.15 keeps a sequence "cleaned", and free text in items is where leaks hide.
                # In the one item a D sequence keeps, nothing of the original stays.
                if dummy:
                    # Numbers (channel lists, counts) identify nobody and keep their multiplicity.
                    action = _KEPT_IN_ITEM if vr in _NUMBER_VRS else _DUMMY_ITEM
                else:
                    action = _CLEAN_NESTED if path and vr in _FREE_TEXT_VRS else _NO_OP
            op = action.op
            if vr in ("DA", "TM") and op in (Op.SHIFT, Op.CLEAN):
                temporal[tag] = (vr, action)
                continue
            if vr == "SQ" and op is Op.BLANK and tag in _REMOVED_WHEN_BLANKED and (
                    not path or _REQUEST_ATTRIBUTES_ITEM.search(path)):
                self._remove(ds, tag, ctx, path, Action(Op.REMOVE, f"{action.source} (X/Z: Type 3 sequence)"))
                continue
            if vr == "SQ" and op is not Op.REMOVE:
                self._sequence(ds, tag, ctx, path, action)
                continue
            if op is Op.KEEP:
                if ctx.changes is not None:
                    self._record(ds, tag, ctx, path, action, keep=True)
                continue
            self._apply(ds, tag, vr, action, ctx, path)
        if temporal:
            self._shift_temporal(ds, temporal, ctx, path)
        self._private_creators(ds, creators, ctx, path)

    @staticmethod
    def _un_as_sequence(ds: Dataset, tag: int) -> bool:
        """Replace a UN element by the sequence its bytes encode, if they encode one (PS3.5 6.2.2)."""
        raw = ds.get_item(tag)
        value = getattr(raw, "value", None)
        if not isinstance(value, bytes) or len(value) < 8 or value[:4] != _ITEM_TAG:
            return False
        try:
            encoding = getattr(ds, "_character_set", None) or "iso8859"
            seq = read_sequence(io.BytesIO(value), True, True, len(value), encoding)
            for item in seq:
                for _ in item.keys():
                    pass
        except Exception:  # not a sequence after all: the caller removes it
            return False
        ds[tag] = DataElement(tag, "SQ", seq)
        return True

    @staticmethod
    def _trim_pixel_data(ds: Dataset, ctx: _Context) -> None:
        """Native Pixel Data longer than its image loses the excess: nothing may hide after the frames."""
        raw = ds.get_item(PIXEL_DATA) if PIXEL_DATA in ds else None
        value = getattr(raw, "value", None)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if not isinstance(value, bytes) or syntax is None or UID(syntax).is_encapsulated:
            return
        expected = pixels.expected_length(ds)
        if expected is not None and len(value) > expected:
            ctx.mutations += 1
            if isinstance(raw, RawDataElement):
                ds[PIXEL_DATA] = raw._replace(length=expected, value=value[:expected])
            else:
                ds[PIXEL_DATA].value = value[:expected]
            if ctx.changes is not None:
                ctx.changes.append(Change("(7FE0,0010)", "PixelData", "trim [nmip-agent]",
                                          f"{len(value)} bytes", f"{expected} bytes, the image's own"))

    def _add(self, ds: Dataset, ctx: _Context) -> None:
        """The recipes' ADD lines: attributes the programme wants in every output."""
        for tag, value, action in self.plan.additions:
            if tag not in ds:
                ctx.mutations += 1
                _set(ds, tag, str(dictionary_VR(tag)), value)
                if ctx.changes is not None:
                    ctx.changes.append(Change(_tag_text(tag), keyword_for_tag(tag) or "", action.label, "", value))

    def _overlay_groups_removed(self, tags: list[int]) -> set[int]:
        """Overlay groups whose Overlay Data the plan does not keep: the whole group goes.

        The Overlay Plane Module requires Overlay Data, and a bitmap cannot be cleaned or dummied.
        """
        groups = set()
        for tag in tags:
            if tag & 0xFF01FFFF == 0x60003000:
                action = self.plan.public_action(tag)
                if action is not None and action.op is not Op.KEEP:
                    groups.add(tag >> 16)
        return groups

    def _private_creators(self, ds: Dataset, creators: dict[tuple[int, int], str], ctx: _Context, path: str) -> None:
        """Keep a private creator only when its block is kept and still holds an element."""
        for (group, block), creator in creators.items():
            tag = group << 16 | block
            survivors = any(
                t >> 16 == group and (t & 0xFFFF) >> 8 == block for t in ds.keys() if t & 0xFFFF > 0xFF
            )
            if survivors and self.plan.keeps_private_block(group, creator):
                if ctx.changes is not None:
                    self._record(ds, tag, ctx, path, Action(Op.KEEP, "private creator of a kept block"), keep=True)
            else:
                self._remove(ds, tag, ctx, path, Action(Op.REMOVE, "private creator"))

    def _sequence(self, ds: Dataset, tag: int, ctx: _Context, path: str, action: Action) -> None:
        """A sequence: Z empties it, D keeps one item with nothing of the original, any other
        action keeps its items and applies the profile inside them."""
        raw = ds.get_item(tag)
        seq = ds[tag].value or []
        where = path + _tag_text(tag)
        if action.op is Op.BLANK:
            if ctx.changes is not None:
                ctx.changes.append(Change(where, keyword_for_tag(tag) or "", action.label, f"{len(seq)} item(s)", "0 items"))
            if len(seq):
                ctx.mutations += 1
                ds[tag] = DataElement(tag, "SQ", Sequence())
            return
        dummy = action.op is Op.DUMMY
        if dummy and len(seq) > 1:
            ctx.mutations += 1
            seq = Sequence([seq[0]])
            ds[tag] = DataElement(tag, "SQ", seq)
        if ctx.changes is not None:
            after = "1 item, dummied" if dummy and len(seq) else f"{len(seq)} item(s), each de-identified"
            ctx.changes.append(Change(where, keyword_for_tag(tag) or "", action.label, f"{len(seq)} item(s)", after))
        mutations = ctx.mutations
        depth = where.count(" > ") + 1
        for index, item in enumerate(seq):
            self._walk(item, ctx, f"{where}[{index}] > ", dummy=dummy, depth=depth)
        if ctx.mutations == mutations and isinstance(raw, RawDataElement):
            # Nothing inside changed: write the sequence back as the bytes it came in, which is
            # several times cheaper than encoding its items element by element.
            ds[tag] = raw

    def _apply(self, ds: Dataset, tag: int, vr: str, action: Action, ctx: _Context, path: str) -> None:
        op = action.op
        if op in (Op.REMOVE, Op.BLANK, Op.DUMMY) and vr in _REMEMBERED_VRS and not tag >> 16 & 1:
            # What the profile takes away is identifying by its own rules: it must not come back
            # anywhere else (a damaged tag can move a serial number into an attribute kept as is).
            # Descriptions made of imaging words ("Carotids") are no identifier, wherever they recur.
            # Public attributes only: private blocks are removed whole, vendor by vendor.
            ctx.removed.append(self._text(ds, tag))
        if op is Op.REMOVE:
            self._remove(ds, tag, ctx, path, action)
            return
        before = self._text(ds, tag) if ctx.changes is not None or op in (Op.UID, Op.CLEAN, Op.SHIFT, Op.VOCABULARY) else ""
        if vr == "PN" and op is not Op.PATIENT_PSEUDONYM:
            ctx.identifiers.add_person_name("person_name", before or self._text(ds, tag))
        if op is Op.BLANK:
            value: Any = None if vr not in _TEXT_VRS and vr not in ("DA", "TM", "DT", "AS", "DS", "IS", "UI") else ""
        elif op is Op.DUMMY:
            value = self._uids(before or self._text(ds, tag), ctx) if vr == "UI" else _DUMMY.get(vr)
        elif op is Op.UID:
            value = self._uids(before, ctx) if vr in ("UI", "UN") else _DUMMY.get(vr)
        elif op is Op.PATIENT_PSEUDONYM:
            # A person name with its component delimiter: the pseudonym is the family name
            # (a PN without `^` is the retired form dciodvfy warns about).
            value = ctx.patient_pseudonym + "^" if vr == "PN" else ctx.patient_pseudonym
        elif op is Op.ACCESSION_PSEUDONYM:
            source = self._text(ds, tag) if not before else before
            value = self.pseudonyms.accession_pseudonym(source) if source.strip() else ""
        elif op is Op.LITERAL:
            value = action.value
        elif op in (Op.CLEAN, Op.SHIFT):
            value = self._clean(before, vr, ctx)
        elif op is Op.VOCABULARY:
            value = self._vocabulary(before, vr, ctx)
        else:  # pragma: no cover - every Op is handled above
            raise AssertionError(op)
        if value is None and op is not Op.BLANK:
            # No valid replacement exists for this VR (binary, unknown): removal is the safe choice.
            self._remove(ds, tag, ctx, path, action)
            return
        if op in (Op.CLEAN, Op.VOCABULARY) and isinstance(value, str) and vr in _MAX_LENGTH:
            value = _fit(value, vr)
        if op in (Op.CLEAN, Op.VOCABULARY) and value == before:
            # Clean text with nothing to remove stays as it came, so its sequence can stay raw.
            if ctx.changes is not None:
                ctx.changes.append(Change(path + _tag_text(tag), keyword_for_tag(tag) or "", action.label, before, before))
            return
        ctx.mutations += 1
        if vr == "UN" and isinstance(value, str):
            ds[tag] = DataElement(tag, "UN", value.encode("ascii", "replace") + (b"\x00" if len(value) % 2 else b""))
        else:
            _set(ds, tag, vr, value)
        if ctx.changes is not None:
            ctx.changes.append(Change(path + _tag_text(tag), keyword_for_tag(tag) or "", action.label, before,
                                      self._text(ds, tag)))

    def _clean(self, before: str, vr: str, ctx: _Context) -> str | None:
        """PS3.15 'clean': dates move by the patient's offset; text loses the source's identifiers."""
        if vr == "DT":
            return dates.shift_dt(before, ctx.offset) or ""
        if vr in _TEXT_VRS:
            return text.clean(before, ctx.identifiers, self.scanner) if self.clean_text else before
        if vr in _BINARY_VRS:
            return None  # binary content cannot be cleaned: remove it
        return before  # numbers carry no identifiers

    def _imaging_words(self, value: str) -> bool:
        """Whether every word of `value` is imaging vocabulary (a plural too)."""
        vocabulary = self.scanner.vocabulary
        words = _WORDS.findall(value.upper())
        return bool(words) and all(w in vocabulary or w.rstrip("S") in vocabulary or w.isdigit() for w in words)

    def _vocabulary(self, before: str, vr: str, ctx: _Context) -> str | None:
        """Short descriptors: only imaging vocabulary survives (`func:vocabulary`)."""
        if vr not in _TEXT_VRS:
            return self._clean(before, vr, ctx)
        if not self.clean_text:
            return before
        return "\\".join(text.keep_vocabulary(v, ctx.identifiers, self.scanner) for v in before.split("\\"))

    def _uids(self, before: str, ctx: _Context) -> str:
        out = []
        for uid in before.split("\\"):
            uid = uid.strip().strip("\x00")
            if not uid:
                continue
            new = ctx.uid_map.get(uid)
            if new is None:
                new = ctx.uid_map[uid] = self.pseudonyms.uid(uid)
                ctx.identifiers.add_uid(uid)
            out.append(new)
        return "\\".join(out)

    def _shift_temporal(self, ds: Dataset, temporal: dict[int, tuple[str, Action]], ctx: _Context, path: str) -> None:
        """Shift DA and TM values; a date and its paired time move together as one instant."""
        done: set[int] = set()
        for tag, (vr, action) in temporal.items():
            if vr != "DA":
                continue
            time_tag = dates.DATE_TO_TIME.get(tag)
            paired = time_tag if time_tag in temporal else None
            da_before = self._text(ds, tag)
            tm_before = self._text(ds, paired) if paired else None
            new_da: str | None
            new_tm: str | None
            if "\\" in da_before:  # several dates: each moves alone
                new_da = "\\".join(dates.shift_da(d, ctx.offset) or "" for d in da_before.split("\\"))
                new_tm = None
            else:
                new_da, new_tm = dates.shift_date_time(da_before, tm_before, ctx.offset)
            self._set_temporal(ds, tag, "DA", da_before, new_da, action, ctx, path)
            done.add(tag)
            if paired is not None:
                self._set_temporal(ds, paired, "TM", tm_before or "", new_tm, temporal[paired][1], ctx, path)
                done.add(paired)
        for tag, (vr, action) in temporal.items():
            if tag not in done:
                before = self._text(ds, tag)
                new = "\\".join(dates.shift_time(t, ctx.offset) or "" for t in before.split("\\"))
                self._set_temporal(ds, tag, vr, before, new, action, ctx, path)

    def _set_temporal(self, ds: Dataset, tag: int, vr: str, before: str, after: str | None,
                      action: Action, ctx: _Context, path: str) -> None:
        # A value that is not a date cannot be shifted: it is emptied rather than kept as it was.
        ctx.mutations += 1
        _set(ds, tag, vr, after or "")
        if ctx.changes is not None:
            ctx.changes.append(Change(path + _tag_text(tag), keyword_for_tag(tag) or "", action.label, before, after or ""))

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _text(ds: Dataset, tag: int) -> str:
        """The element's value as text.

        Values of VRs that are ASCII by definition are decoded straight from their raw bytes:
        pydicom's full conversion is most of the cost of a de-identification pass.
        """
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            raw = elem.value
            if elem.VR in _ASCII_VRS or (raw.isascii() and b"\x1b" not in raw and elem.VR in _TEXT_VRS):
                # ASCII is the same in every character set but ISO 2022 (whose escapes are ESC).
                return raw.decode("ascii", "replace").strip("\x00 ")
        try:
            value = ds[tag].value
        except Exception:
            raw = elem.value
            return raw.decode("ascii", "replace") if isinstance(raw, bytes) else ""
        if value is None:
            return ""
        if isinstance(value, bytes):
            return value.decode("ascii", "replace").rstrip("\x00 ")
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value)

    def _remove(self, ds: Dataset, tag: int, ctx: _Context, path: str, action: Action) -> None:
        if ctx.changes is not None:
            self._record(ds, tag, ctx, path, action, keep=False)
        ctx.mutations += 1
        del ds[tag]

    def _record(self, ds: Dataset, tag: int, ctx: _Context, path: str, action: Action, *, keep: bool) -> None:
        assert ctx.changes is not None
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                before = f"{len(elem.value)} item(s)"
            elif isinstance(elem.value, bytes) and elem.VR not in _TEXT_VRS:
                before = f"({len(elem.value)} bytes)"
            else:
                before = self._text(ds, tag)
        except Exception:
            before = "(unreadable value)"
        if len(before) > 200:
            before = before[:60] + f"... ({len(before)} characters)"
        ctx.changes.append(Change(path + _tag_text(tag), keyword_for_tag(tag) or "", action.label, before,
                                  before if keep else None))

    # -- what every output carries ------------------------------------------------------------

    def _mark(self, ds: Dataset) -> None:
        """PS3.15 E.1.1: say that identity was removed, how, and what happened to dates."""
        _set(ds, 0x00120062, "CS", "YES")  # PatientIdentityRemoved
        _set(ds, 0x00120063, "LO", self._method)  # DeidentificationMethod
        implicit, little = ds.original_encoding
        ds[0x00120064] = self._method_codes(bool(implicit), little is not False)  # DeidentificationMethodCodeSequence
        temporal = "UNMODIFIED" if self.profile.dates_kept else "MODIFIED" if self.profile.dates_shifted else "REMOVED"
        _set(ds, 0x00280303, "CS", temporal)  # LongitudinalTemporalInformationModified

    def mark_pixels_cleaned(self, ds: Dataset, changes: list[Change] | None) -> None:
        """Burned-in text was covered: BurnedInAnnotation NO, and Clean Pixel Data (113101) among
        the method codes. Only once every text area was handled (the gate checks it again)."""
        before = str(ds.get("BurnedInAnnotation", "") or "")
        _set(ds, 0x00280301, "CS", "NO")
        implicit, little = ds.original_encoding
        ds[0x00120064] = self._method_codes(bool(implicit), little is not False, pixels=True)
        if changes is not None:
            changes.append(Change("(0028,0301)", "BurnedInAnnotation", "pixels masked [nmip-agent]", before, "NO"))

    def _method_codes(self, implicit: bool, little: bool, *, pixels: bool = False) -> RawDataElement:
        """The De-identification Method Code Sequence, encoded once per transfer syntax."""
        key = (implicit, little, pixels)
        if key not in self._codes:
            codes = Sequence()
            extra = [METHOD_CODES["clean_pixel_data"]] if pixels else []
            for value, meaning in self.profile.method_codes + extra:
                item = Dataset()
                item[0x00080100] = DataElement(0x00080100, "SH", value)  # CodeValue
                item[0x00080102] = DataElement(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
                item[0x00080104] = DataElement(0x00080104, "LO", meaning)  # CodeMeaning
                codes.append(item)
            buffer = DicomBytesIO()
            buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
            write_data_element(buffer, DataElement(0x00120064, "SQ", codes))
            encoded = buffer.getvalue()[8 if implicit else 12 :]  # the value, after tag, VR and length
            self._codes[key] = RawDataElement(BaseTag(0x00120064), "SQ", len(encoded), encoded, 0, implicit, little)
        return self._codes[key]

    def _file_meta(self, ds: Dataset, ctx: _Context) -> None:
        """A new file meta group: only what PS3.10 requires, naming nmip-agent as the writer.

        The sender's meta (source AE title, private information) is dropped, not cleaned.
        """
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        syntax: str | None = old.get("TransferSyntaxUID")
        if syntax is None:
            implicit, _little = ds.original_encoding
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta
