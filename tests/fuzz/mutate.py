"""Damaged DICOM files for the fuzz suite, generated deterministically from a variant id.

Sources are the planted synthetic CT slices of tests/synthetic.py, in every character set they
support plus five single-byte non-Latin sets, and a dozen small public sample files of pydicom.
Each is encoded in every transfer syntax it can be re-encoded into (implicit VR LE, explicit VR
LE, explicit VR BE, deflated explicit VR LE; encapsulated samples stay as they are; sequences and
items of undefined length with delimiters in the implicit and big endian ones, defined lengths in
the others), and each encoding is then damaged in many ways: truncation, byte flips, inflated element lengths, lengths
of 0xFFFFFFFE, removed delimiters, duplicated and reordered elements, changed tags and VRs, data
appended after the pixel data, a file meta that lies about the transfer syntax, and combinations.

A variant id names everything needed to rebuild it: "<source>.<syntax>-<kind>-<nnnn>", e.g.
"CT_small.evrbe-trunc-0003". Its bytes come from `random.Random(seed)`, the seed derived from
the id itself, so `build("CT_small.evrbe-trunc-0003")` gives the same bytes on every machine.

    from tests.fuzz.mutate import build, variant_ids
    for vid in variant_ids():
        variant = build(vid)        # variant.data: the damaged file; variant.source: what it came from

Memory: no length written here exceeds what the file holds, except 0xFFFFFFFE (undefined length
minus one), which pydicom reads to the end of the buffer rather than allocating.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pydicom import dcmread
from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
    generate_uid,
)

from tests.synthetic import Patient, make_ct_slice, planted_values

_T = TypeVar("_T")

__all__ = [
    "Encoding", "Source", "Variant", "build", "encoded_forms", "encodings", "inflate_tolerant", "iter_variants",
    "python_codecs", "scan", "source", "source_names", "undefine", "variant_ids", "KIND_COUNTS", "RETAINED_BY_NCCID",
]  # fmt: skip

# --- sources -----------------------------------------------------------------------------------

# Single-byte non-Latin sets: the patient's name, and free text planted in the slice by us (not by
# tests/synthetic.py), in that script.
_SCRIPT = {
    # charset: (patient name, station name (SH, <= 16), institution name, image comments template)
    "ISO_IR 144": ("Иванов^Пётр", "КТ-СКАНЕР", "Городская больница №1", "Пациент Иванов Пётр"),
    "ISO_IR 126": ("Παπαδόπουλος^Νίκος", "ΣΤΑΘΜΟΣ-ΚΤ", "Νοσοκομείο Αθηνών", "Ασθενής Παπαδόπουλος Νίκος"),
    "ISO_IR 127": ("حداد^سمير", "محطة-مقطعي", "مستشفى الأمل", "المريض حداد سمير"),
    "ISO_IR 138": ("כהן^דוד", "תחנה-סורק", "בית חולים הדסה", "מטופל כהן דוד"),
    "ISO_IR 166": ("สมชาย^ใจดี", "สถานีซีที", "โรงพยาบาลศิริราช", "ผู้ป่วย สมชาย ใจดี"),
}
# Synthetic slices: name -> (Specific Character Set as make_ct_slice takes it, patient).
SYNTHETIC: dict[str, tuple[str | None, Patient]] = {
    "syn-ascii": (None, Patient()),
    "syn-ir100": ("ISO_IR 100", Patient()),
    "syn-ir100name": ("ISO_IR 100", Patient(name="Müller^Jürgen")),
    "syn-ir192": ("ISO_IR 192", Patient()),
    "syn-ir192name": ("ISO_IR 192", Patient(name="Wang^XiaoDong=王^小東")),
    "syn-ir87": ("\\ISO 2022 IR 87", Patient()),
    "syn-ir87name": ("\\ISO 2022 IR 87", Patient(name="Yamada^Tarou=山田^太郎=やまだ^たろう")),
    "syn-ir144": ("ISO_IR 144", Patient(name=_SCRIPT["ISO_IR 144"][0])),
    "syn-ir126": ("ISO_IR 126", Patient(name=_SCRIPT["ISO_IR 126"][0])),
    "syn-ir127": ("ISO_IR 127", Patient(name=_SCRIPT["ISO_IR 127"][0])),
    "syn-ir138": ("ISO_IR 138", Patient(name=_SCRIPT["ISO_IR 138"][0])),
    "syn-ir166": ("ISO_IR 166", Patient(name=_SCRIPT["ISO_IR 166"][0])),
}
# Public samples (pydicom's test data, MIT): CT/MR that nccid accepts, RT and SEG objects only
# the Basic Profile accepts, and refused ones (secondary capture, ultrasound, no Patient ID) whose
# reading and screening must survive damage as well. Missing ones are skipped.
SAMPLES = (
    "CT_small", "MR_small", "MR_small_implicit", "MR_small_bigendian", "MR_small_RLE", "693_J2KI",
    "rtplan", "rtstruct", "rtdose", "liver_1frame", "emri_small", "JPEG2000", "image_dfl",
    "ExplVR_BigEnd",
)  # fmt: skip

#: Planted labels the nccid profile keeps on purpose (Retain Device Identity keeps Station Name
#: and Device Serial Number); the Basic Profile keeps none.
RETAINED_BY_NCCID = frozenset({"site.station_name", "site.device_serial", "script.station_name"})

_SYNTAXES = {
    "ivrle": ImplicitVRLittleEndian,
    "evrle": ExplicitVRLittleEndian,
    "evrbe": ExplicitVRBigEndian,
    "defl": DeflatedExplicitVRLittleEndian,
}
# pydicom writes sequences and items with defined lengths; many writers (DCMTK's default) use
# undefined lengths and delimiters. These syntaxes get the undefined-length form.
_UNDEFINED_LENGTHS = {"ivrle", "evrbe"}
_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


@dataclass(frozen=True)
class Source:
    """One source object before encoding: its dataset, and the strings that must never leave."""

    name: str
    dataset: Dataset
    planted: dict[str, str]  # label -> value: planted_values + our script text, or uid.* for samples
    charset: tuple[str, ...]  # Specific Character Set values (empty: default repertoire)
    original: bytes | None  # a sample's file as shipped
    original_syntax: str | None

    @property
    def synthetic(self) -> bool:
        return self.name.startswith("syn-")


@dataclass(frozen=True)
class Encoding:
    """A source in one transfer syntax: the preamble and file meta (`head`) and the dataset
    (`body`, inflated when the syntax is deflated). The file is head + (deflate(body) | body)."""

    source: Source
    syntax: str  # "ivrle", "evrle", "evrbe", "defl" or "orig"
    head: bytes
    body: bytes
    implicit: bool
    little: bool
    deflated: bool

    @property
    def data(self) -> bytes:
        return self.head + (_deflate(self.body) if self.deflated else self.body)


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["nmip-agent fuzz", *parts]))


def _quiet(fn: Callable[[], _T]) -> _T:
    """Run generator-side pydicom code: its warnings are about the samples, not the engine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _synthetic(name: str) -> Source:
    charset, patient = SYNTHETIC[name]

    def make() -> Dataset:
        ds = make_ct_slice(
            patient,
            charset=charset,
            study_uid=_uid(name, "study"),
            series_uid=_uid(name, "series"),
            sop_uid=_uid(name, "sop"),
            frame_of_reference_uid=_uid(name, "frame"),
        )
        if charset in _SCRIPT:
            _, station, institution, comments = _SCRIPT[charset]
            ds.StationName = station
            ds.InstitutionName = institution
            ds.ImageComments = f"{comments} {patient.patient_id}"
        return ds

    ds = _quiet(make)
    planted = planted_values(patient, ds)
    if charset in _SCRIPT:
        _, station, institution, comments = _SCRIPT[charset]
        planted.update({"script.station_name": station, "script.institution_name": institution,
                        "script.image_comments": f"{comments} {patient.patient_id}"})
        planted.pop("site.station_name", None)
        planted.pop("site.institution_name", None)
    values = ds.get("SpecificCharacterSet")
    charsets = tuple(values) if isinstance(values, (list, tuple)) or type(values).__name__ == "MultiValue" else (
        (str(values),) if values else ())
    return Source(name, ds, planted, charsets, None, None)


def _sample(name: str) -> Source | None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(f"{name}.dcm", download=False)
    if not path:
        return None
    with open(path, "rb") as f:
        original = f.read()
    ds = _quiet(lambda: dcmread(io.BytesIO(original), force=True))
    _quiet(lambda: [e.value for e in ds.iterall()])  # decode every raw value now, once
    planted = {k: v for k, v in _quiet(lambda: planted_values(Patient(), ds)).items() if k.startswith("uid.")}
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    values = ds.get("SpecificCharacterSet")
    charsets = tuple(values) if type(values).__name__ == "MultiValue" else ((str(values),) if values else ())
    return Source(name, ds, planted, charsets, original, syntax or None)


@functools.lru_cache(maxsize=None)
def source(name: str) -> Source | None:
    return _synthetic(name) if name in SYNTHETIC else _sample(name)


def source_names() -> list[str]:
    return list(SYNTHETIC) + [n for n in SAMPLES if source(n) is not None]


def _fresh(ds: Dataset) -> Dataset:
    """A copy that remembers nothing of how it was read, every value decoded (so pydicom re-encodes it)."""
    out = Dataset()
    for elem in ds:
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", Sequence([_fresh(item) for item in elem.value or []])))
        else:
            out.add(DataElement(elem.tag, elem.VR, elem.value))
    return out


def _meta_for(src: Source, syntax_uid: str) -> FileMetaDataset:
    ds = src.dataset
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    for elem in old:
        if elem.tag.group == 2 and elem.tag.element:
            meta.add(DataElement(elem.tag, elem.VR, elem.value))
    if "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = UID(str(ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")))
    if "MediaStorageSOPInstanceUID" not in meta:
        meta.MediaStorageSOPInstanceUID = UID(str(ds.get("SOPInstanceUID", _uid(src.name, "sop"))))
    meta.TransferSyntaxUID = UID(syntax_uid)
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    return meta


def _head(meta: FileMetaDataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


def _encode_body(ds: Dataset, implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    from pydicom.filewriter import write_dataset

    write_dataset(fp, ds)
    return fp.getvalue()


def _deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


def inflate_tolerant(data: bytes) -> bytes:
    """As much of a raw deflate stream as inflates, however damaged or cut the rest is."""
    out = bytearray()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    for i in range(0, len(data), 64):
        try:
            out += inflater.decompress(data[i : i + 64])
        except zlib.error:
            break
        if inflater.eof:
            break
    return bytes(out)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """A Part 10 file's preamble + meta, and the rest (no meta: everything is the body)."""
    if data[128:132] != b"DICM":
        return b"", data
    (length,) = struct.unpack_from("<I", data, 140)
    end = 144 + length
    return data[:end], data[end:]


@functools.lru_cache(maxsize=None)
def encodings(name: str) -> tuple[Encoding, ...]:
    src = source(name)
    assert src is not None
    out: list[Encoding] = []
    if src.original is not None:
        head, rest = _split(src.original)
        syntax = src.original_syntax or ImplicitVRLittleEndian  # a bare dataset: pydicom guesses
        deflated = syntax == DeflatedExplicitVRLittleEndian
        body = zlib.decompress(rest, -zlib.MAX_WBITS) if deflated else rest
        implicit, little = _flags(syntax, body)
        out.append(Encoding(src, "orig", head, body, implicit, little, deflated))
        if syntax not in _UNCOMPRESSED:
            return tuple(out)  # encapsulated pixel data: no other syntax without transcoding it
    fresh = _quiet(lambda: _fresh(src.dataset)) if src.original is not None else src.dataset
    for short, uid in _SYNTAXES.items():
        if src.original is not None and uid == src.original_syntax:
            continue
        implicit, little = uid == ImplicitVRLittleEndian, uid != ExplicitVRBigEndian
        body = _quiet(lambda: _encode_body(fresh, implicit, little))
        if short in _UNDEFINED_LENGTHS:
            body = undefine(body, implicit, little)
        out.append(Encoding(src, short, _head(_meta_for(src, uid)), body, implicit, little,
                            uid == DeflatedExplicitVRLittleEndian))
    return tuple(out)


def _flags(syntax: str, body: bytes) -> tuple[bool, bool]:
    if syntax == ImplicitVRLittleEndian:
        # A bare dataset may be explicit: look at the first element's VR bytes.
        return (not body[4:6].isalpha()), True
    return False, syntax != ExplicitVRBigEndian


def encoding(name: str, syntax: str) -> Encoding:
    for enc in encodings(name):
        if enc.syntax == syntax:
            return enc
    raise KeyError(f"{name}.{syntax}")


# --- a tolerant element scanner ---------------------------------------------------------------

ITEM, ITEM_DELIM, SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_FREE_TEXT = {"LO", "LT", "PN", "SH", "ST", "UT", "UC"}
_IDENTIFYING = {0x00100010, 0x00100020, 0x00100030, 0x00101001, 0x00101040, 0x00102154, 0x00080050, 0x00080080,
                0x00080081, 0x00081010, 0x00081040, 0x00080090, 0x00081070, 0x00104000, 0x00204000, 0x00181000,
                0x0020000D, 0x0020000E, 0x00080018, 0x00200052, 0x00081155, 0x0040A123, 0x0040A160}  # fmt: skip


@dataclass
class Elem:
    """One element, item or delimiter of an encoded dataset (offsets into the body)."""

    start: int
    tag: int
    vr: str
    hlen: int  # header bytes (tag, VR, length)
    length: int  # as declared
    len_at: int  # offset of the length field
    len_size: int  # 2 or 4
    parent: int  # index of the enclosing item (elements), sequence (items), -1 at top level
    depth: int  # enclosing sequences
    kind: str = "element"  # "element", "item", "delim"
    end: int = -1  # -1: not complete (truncated or unparseable)

    @property
    def vstart(self) -> int:
        return self.start + self.hlen


class _Stop(Exception):
    pass


def scan(body: bytes, implicit: bool, little: bool) -> list[Elem]:
    """Every element, item and delimiter of `body`, as far as it parses; never raises."""
    out: list[Elem] = []
    try:
        _scan_elements(body, 0, len(body), implicit, little, -1, 0, out)
    except (_Stop, struct.error, UnicodeDecodeError):
        pass
    return out


def _vr_for(tag: int) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _scan_elements(buf: bytes, pos: int, end: int, implicit: bool, little: bool, parent: int, depth: int,
                   out: list[Elem]) -> int:
    e = "<" if little else ">"
    while pos + 8 <= end:
        group, element = struct.unpack_from(e + "HH", buf, pos)
        tag = group << 16 | element
        if tag in (ITEM_DELIM, SEQ_DELIM):
            (length,) = struct.unpack_from(e + "I", buf, pos + 4)
            out.append(Elem(pos, tag, "", 8, length, pos + 4, 4, parent, depth, "delim", pos + 8))
            return pos + 8
        if tag == ITEM:
            raise _Stop
        if implicit:
            (length,) = struct.unpack_from(e + "I", buf, pos + 4)
            vr = _vr_for(tag) if not (group & 1 and element > 0xFF) else "UN"
            if group & 1 and 0x10 <= element <= 0xFF:
                vr = "LO"
            if length == UNDEFINED and tag != PIXEL_DATA:
                vr = "SQ"
            hlen, len_at, len_size = 8, pos + 4, 4
        else:
            raw_vr = buf[pos + 4 : pos + 6]
            if not raw_vr.isalpha() or not raw_vr.isupper():
                raise _Stop
            vr = raw_vr.decode("ascii")
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from(e + "I", buf, pos + 8)
                hlen, len_at, len_size = 12, pos + 8, 4
            else:
                (length,) = struct.unpack_from(e + "H", buf, pos + 6)
                hlen, len_at, len_size = 8, pos + 6, 2
        index = len(out)
        elem = Elem(pos, tag, vr, hlen, length, len_at, len_size, parent, depth)
        out.append(elem)
        vstart = pos + hlen
        if vr == "SQ" or (vr == "UN" and length == UNDEFINED):
            item_implicit = implicit or vr == "UN"
            if length == UNDEFINED:
                vend = _scan_items(buf, vstart, end, item_implicit, little if vr == "SQ" else True, index, depth + 1,
                                   out, undefined=True)
            else:
                vend = vstart + length
                if vend > end:
                    raise _Stop
                _scan_items(buf, vstart, vend, item_implicit, little, index, depth + 1, out, undefined=False)
        elif length == UNDEFINED:  # encapsulated pixel data: fragments, then a sequence delimiter
            vend = _scan_fragments(buf, vstart, end, little, index, depth + 1, out)
        else:
            vend = vstart + length
        if vend > end:
            raise _Stop
        elem.end = vend
        pos = vend
    if pos != end:
        raise _Stop
    return pos


def _scan_items(buf: bytes, pos: int, end: int, implicit: bool, little: bool, parent: int, depth: int,
                out: list[Elem], *, undefined: bool) -> int:
    e = "<" if little else ">"
    while pos + 8 <= end:
        group, element = struct.unpack_from(e + "HH", buf, pos)
        tag = group << 16 | element
        (length,) = struct.unpack_from(e + "I", buf, pos + 4)
        if tag == SEQ_DELIM:
            out.append(Elem(pos, tag, "", 8, length, pos + 4, 4, parent, depth, "delim", pos + 8))
            return pos + 8
        if tag != ITEM:
            raise _Stop
        index = len(out)
        item = Elem(pos, tag, "", 8, length, pos + 4, 4, parent, depth, "item")
        out.append(item)
        if length == UNDEFINED:
            vend = _scan_elements(buf, pos + 8, end, implicit, little, index, depth, out)
            if not out or out[-1].tag != ITEM_DELIM:
                raise _Stop
        else:
            vend = pos + 8 + length
            if vend > end:
                raise _Stop
            _scan_elements(buf, pos + 8, vend, implicit, little, index, depth, out)
        item.end = vend
        pos = vend
    if undefined:
        raise _Stop
    return pos


def _scan_fragments(buf: bytes, pos: int, end: int, little: bool, parent: int, depth: int, out: list[Elem]) -> int:
    e = "<" if little else ">"
    while pos + 8 <= end:
        group, element = struct.unpack_from(e + "HH", buf, pos)
        tag = group << 16 | element
        (length,) = struct.unpack_from(e + "I", buf, pos + 4)
        if tag == SEQ_DELIM:
            out.append(Elem(pos, tag, "", 8, length, pos + 4, 4, parent, depth, "delim", pos + 8))
            return pos + 8
        if tag != ITEM or pos + 8 + length > end:
            raise _Stop
        out.append(Elem(pos, tag, "", 8, length, pos + 4, 4, parent, depth, "fragment", pos + 8 + length))
        pos += 8 + length
    raise _Stop


def undefine(body: bytes, implicit: bool, little: bool) -> bytes:
    """The same dataset with every sequence and item of undefined length, closed by delimiters."""
    layout = scan(body, implicit, little)
    children: dict[int, list[int]] = {}
    for i, el in enumerate(layout):
        children.setdefault(el.parent, []).append(i)
    e = "<" if little else ">"
    item_delim = struct.pack(e + "HHI", 0xFFFE, 0xE00D, 0)
    seq_delim = struct.pack(e + "HHI", 0xFFFE, 0xE0DD, 0)

    def emit(i: int) -> bytes:
        el = layout[i]
        if el.vr != "SQ":
            return body[el.start : el.end]
        out = body[el.start : el.len_at] + struct.pack(e + "I", UNDEFINED)
        for j in children.get(i, []):
            item = layout[j]
            if item.kind != "item":
                continue
            out += body[item.start : item.start + 4] + struct.pack(e + "I", UNDEFINED)
            out += b"".join(emit(k) for k in children.get(j, []) if layout[k].kind == "element")
            out += item_delim
        return out + seq_delim

    top = [i for i in children.get(-1, []) if layout[i].kind == "element"]
    if not top or layout[top[-1]].end != len(body):
        return body  # did not scan to the end: leave it as it is
    return b"".join(emit(i) for i in top)


# --- a file being damaged ----------------------------------------------------------------------


@dataclass
class _Work:
    enc: Encoding
    head: bytearray
    body: bytearray
    notes: list[str] = field(default_factory=list)
    body_dropped: bool = False  # truncated inside the head: nothing follows
    raw_ops: list[Callable[[bytearray, int], None]] = field(default_factory=list)  # on the final file
    _layout: list[Elem] | None = None
    _children: dict[tuple[int, int], list[int]] | None = None

    @property
    def layout(self) -> list[Elem]:
        if self._layout is None:
            self._layout = scan(bytes(self.body), self.enc.implicit, self.enc.little)
        return self._layout

    def changed(self) -> None:
        self._layout = self._children = None

    @property
    def e(self) -> str:
        return "<" if self.enc.little else ">"

    def complete(self, *kinds: str) -> list[int]:
        return [i for i, el in enumerate(self.layout) if el.end >= 0 and el.kind in (kinds or ("element",))]

    def pixel(self) -> Elem | None:
        for el in self.layout:
            if el.tag == PIXEL_DATA and el.depth == 0 and el.kind == "element":
                return el
        return None

    def header_end(self) -> int:
        """Where the pixel data starts in the body (the end when there is none)."""
        px = self.pixel()
        return px.start if px is not None else len(self.body)

    def siblings(self, index: int) -> list[int]:
        """The complete elements of the same container as layout[index] (itself included), in order."""
        if self._children is None:
            children: dict[tuple[int, int], list[int]] = {}
            for i, other in enumerate(self.layout):
                if other.kind == "element" and other.end >= 0:
                    children.setdefault((other.parent, other.depth), []).append(i)
            self._children = children
        el = self.layout[index]
        return self._children.get((el.parent, el.depth), [])

    def encode_element(self, elem: DataElement) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = self.enc.little, self.enc.implicit
        _quiet(lambda: write_data_element(fp, elem, encodings=convert_encodings(list(self.enc.source.charset) or None)))
        return fp.getvalue()


def _pick_text(w: _Work, rng: random.Random, *, header_only: bool = True) -> list[int]:
    limit = w.header_end()
    return [i for i in w.complete() if w.layout[i].vr in TEXT_VRS and w.layout[i].length > 0
            and (not header_only or w.layout[i].end <= limit)]


def _choice(rng: random.Random, items: list[int], prefer: Callable[[Elem], bool] | None, w: _Work) -> int | None:
    if not items:
        return None
    if prefer is not None and rng.random() < 0.5:
        preferred = [i for i in items if prefer(w.layout[i])]
        if preferred:
            return rng.choice(preferred)
    return rng.choice(items)


def _identifying(el: Elem) -> bool:
    return el.tag in _IDENTIFYING or el.vr in ("PN", "UI") or (el.tag >> 16) & 1 == 1


# --- the damage --------------------------------------------------------------------------------


def m_trunc(w: _Work, rng: random.Random) -> None:
    """Cut the file: in the head, inside an element's header or value, inside a sequence, at an
    element boundary, inside the pixel data, anywhere; deflated files also in the compressed stream."""
    strategies = ["head", "elemhdr", "value", "sequence", "boundary", "pixel", "anywhere"]
    if w.enc.deflated:
        strategies.append("compressed")
    strategy = rng.choice(strategies)
    if strategy == "head" and len(w.head) > 1:
        at = rng.randrange(1, len(w.head))
        w.head = w.head[:at]
        w.body_dropped = True
        w.notes.append(f"trunc head at {at}")
        return
    if strategy == "compressed":
        def cut_compressed(data: bytearray, head_len: int) -> None:
            if len(data) > head_len + 1:
                del data[rng.randrange(head_len + 1, len(data)) :]
        w.raw_ops.append(cut_compressed)
        w.notes.append("trunc compressed stream")
        return
    layout = w.layout
    complete = w.complete()
    cut: int | None = None
    if strategy == "elemhdr" and complete:
        el = layout[rng.choice(complete)]
        cut = el.start + rng.randrange(1, el.hlen)
    elif strategy == "value":
        values = [i for i in complete if layout[i].end - layout[i].vstart > 1 and layout[i].vr != "SQ"]
        if values:
            el = layout[rng.choice(values)]
            cut = el.vstart + rng.randrange(1, el.end - el.vstart)
    elif strategy == "sequence":
        seqs = [i for i in complete if layout[i].vr == "SQ" and layout[i].end - layout[i].start > 2]
        if seqs:
            el = layout[rng.choice(seqs)]
            cut = rng.randrange(el.start + 1, el.end)
    elif strategy == "boundary" and complete:
        cut = layout[rng.choice(complete)].start
    elif strategy == "pixel":
        px = w.pixel()
        if px is not None and px.end - px.start > 2:
            cut = rng.randrange(px.start + 1, px.end)
    if cut is None:
        strategy = "anywhere"
        cut = rng.randrange(0, max(1, len(w.body)))
    del w.body[cut:]
    w.changed()
    w.notes.append(f"trunc {strategy} at body+{cut}")


def _flip_positions(w: _Work, rng: random.Random, n: int) -> list[tuple[str, int]]:
    """Positions in the head or the header part of the body, biased towards text values."""
    out: list[tuple[str, int]] = []
    texts = _pick_text(w, rng)
    complete = [i for i in w.complete("element", "item", "delim") if w.layout[i].end <= w.header_end()]
    for _ in range(n):
        r = rng.random()
        if r < 0.6 and texts:
            el = w.layout[rng.choice(texts)]
            out.append(("body", rng.randrange(el.vstart, el.end)))
        elif r < 0.8 and complete:
            el = w.layout[rng.choice(complete)]
            out.append(("body", rng.randrange(el.start, el.start + el.hlen)))
        else:
            total = len(w.head) + w.header_end()
            if total:
                p = rng.randrange(total)
                out.append(("head", p) if p < len(w.head) else ("body", p - len(w.head)))
    return out


def _flip(w: _Work, rng: random.Random, n: int) -> None:
    if w.enc.deflated and rng.random() < 0.3:
        flips = [(rng.random(), rng.randrange(1, 256)) for _ in range(n)]

        def flip_compressed(data: bytearray, head_len: int) -> None:
            for where, xor in flips:
                if len(data) > head_len:
                    data[head_len + int(where * (len(data) - head_len))] ^= xor

        w.raw_ops.append(flip_compressed)
        w.notes.append(f"{n} flip(s) in the compressed stream")
        return
    for region, pos in _flip_positions(w, rng, n):
        buf = w.head if region == "head" else w.body
        xor = rng.choice([rng.randrange(1, 256), 0x20, 0x01, 0x80])  # case, low bit, high bit, any
        buf[pos] ^= xor
        w.notes.append(f"flip {region}+{pos} ^{xor:#04x}")
    w.changed()


def m_flip(w: _Work, rng: random.Random) -> None:
    """One byte changed, in the head or the header part of the body (text values most often)."""
    _flip(w, rng, 1)


def m_multiflip(w: _Work, rng: random.Random) -> None:
    """Two to twelve bytes changed."""
    _flip(w, rng, rng.randint(2, 12))


def _set_length(w: _Work, el: Elem, value: int) -> None:
    fmt = w.e + ("H" if el.len_size == 2 else "I")
    struct.pack_into(fmt, w.body, el.len_at, value)
    w.changed()


def m_inflate(w: _Work, rng: random.Random) -> None:
    """A text element's length made larger, so its value swallows what follows (never past the end)."""
    # Elements with something after them to swallow.
    growable = [i for i in w.complete() if w.layout[i].end < len(w.body) and w.layout[i].vr != "SQ"
                and w.layout[i].length < (0xFFFF if w.layout[i].len_size == 2 else UNDEFINED - 1)]
    texts = [i for i in growable if w.layout[i].vr in _FREE_TEXT | {"UI", "DA", "CS"}]
    index = _choice(rng, texts, lambda el: el.tag in (0x00204000, 0x00104000, 0x00100010, 0x00081030), w)
    if index is None:
        index = _choice(rng, growable, None, w)
        if index is None:
            return m_trunc(w, rng)
    el = w.layout[index]
    room = len(w.body) - el.vstart
    limit = min(room, 0xFFFF if el.len_size == 2 else room)
    following = [w.layout[i] for i in w.siblings(index) if w.layout[i].start >= el.end]
    if following and rng.random() < 0.7:
        k = rng.randint(1, min(4, len(following)))
        new = following[k - 1].end - el.vstart
        if rng.random() < 0.3:
            new -= rng.randint(1, 6)  # ends inside the last swallowed element
    else:
        new = el.length + rng.randint(1, 64)
    new = max(el.length + 1, min(new, limit))
    if new > limit:
        new = limit
    _set_length(w, el, new)
    w.notes.append(f"length of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) {el.length} -> {new}")


def m_ffffe(w: _Work, rng: random.Random) -> None:
    """A 4-byte length field set to 0xFFFFFFFE (an element, a sequence, an item, the pixel data)."""
    candidates = [i for i in w.complete("element", "item", "fragment") if w.layout[i].len_size == 4]
    if not candidates:
        return m_inflate(w, rng)
    index = _choice(rng, candidates, lambda el: el.vr == "SQ" or el.kind == "item" or el.tag == PIXEL_DATA, w)
    assert index is not None
    el = w.layout[index]
    _set_length(w, el, 0xFFFFFFFE)
    w.notes.append(f"length 0xFFFFFFFE on {el.kind} ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) at body+{el.start}")


def m_undelim(w: _Work, rng: random.Random) -> None:
    """A sequence delimiter (or an item delimiter) removed, or replaced by junk."""
    delims = [i for i, el in enumerate(w.layout) if el.kind == "delim" and w.layout[el.parent].tag != PIXEL_DATA]
    if not delims or rng.random() < 0.2:
        delims = [i for i, el in enumerate(w.layout) if el.kind == "delim"]  # the pixel data's too
    seq_delims = [i for i in delims if w.layout[i].tag == SEQ_DELIM]
    if not delims:
        # Defined lengths only: a sequence or item made undefined-length, with no delimiter to end it.
        defined = [i for i in w.complete("element", "item") if (w.layout[i].vr == "SQ" or w.layout[i].kind == "item")
                   and w.layout[i].length != UNDEFINED]
        if not defined:
            return m_inflate(w, rng)
        index = _choice(rng, defined, lambda el: el.vr == "SQ", w)
        assert index is not None
        el = w.layout[index]
        _set_length(w, el, UNDEFINED)
        w.notes.append(f"{el.kind} ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) at body+{el.start}: "
                       "undefined length, no delimiter")
        return
    index = rng.choice(seq_delims) if seq_delims and rng.random() < 0.7 else rng.choice(delims)
    el = w.layout[index]
    how = rng.choice(["remove", "remove", "junk", "length"])
    if how == "remove":
        del w.body[el.start : el.end]
    elif how == "junk":
        w.body[el.start : el.end] = bytes(rng.randrange(256) for _ in range(8))
    else:
        struct.pack_into(w.e + "I", w.body, el.start + 4, rng.choice([8, 0xFFFFFFFF, 0x10]))
    w.changed()
    w.notes.append(f"{'sequence' if el.tag == SEQ_DELIM else 'item'} delimiter at body+{el.start}: {how}")


def m_dup(w: _Work, rng: random.Random) -> None:
    """An element copied: right after itself (the same tag twice), later, or earlier (out of order)."""
    candidates = [i for i in w.complete() if w.layout[i].tag != PIXEL_DATA or rng.random() < 0.1]
    index = _choice(rng, candidates, _identifying, w)
    if index is None:
        return m_trunc(w, rng)
    el = w.layout[index]
    copy = bytes(w.body[el.start : el.end])
    siblings = w.siblings(index)
    where = rng.choice(["after", "later", "earlier"])
    if where == "after":
        at = el.end
    else:
        pool = [w.layout[i] for i in siblings if (w.layout[i].start > el.start) == (where == "later")]
        at = rng.choice(pool).start if pool else el.end
    w.body[at:at] = copy
    w.changed()
    w.notes.append(f"duplicate of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) inserted {where} at body+{at}")


def m_append(w: _Work, rng: random.Random) -> None:
    """Data after the pixel data: elements (private, trailing padding, a signature, a copy of the
    header's identifying elements), junk bytes, a second dataset or a whole second file."""
    src = w.enc.source
    what = rng.choice(["elements", "header-copy", "junk", "text-junk", "dataset", "file"])
    tail = b""
    if what == "elements":
        value = rng.choice(sorted(src.planted.values())) if src.planted else "APPENDED"
        elems = [
            DataElement(0x7FE10010, "LO", "PLANTED PRIVATE"),
            DataElement(0x7FE11001, "LO", value[:64]),
            DataElement(0xFFFCFFFC, "OB", bytes(rng.randrange(256) for _ in range(16))),
            DataElement(0x00100010, "PN", value[:64]),
            DataElement(0x7FE00020, "OW", b"\x00\x01" * 4),
        ]
        rng.shuffle(elems)
        if rng.random() < 0.5:
            item = Dataset()
            item.add(DataElement(0x00100020, "LO", value[:64]))
            elems.append(DataElement(0xFFFAFFFA, "SQ", Sequence([item])))
        tail = b"".join(w.encode_element(e) for e in elems[: rng.randint(1, len(elems))])
    elif what == "header-copy":
        top = [i for i in w.complete() if w.layout[i].depth == 0 and w.layout[i].tag != PIXEL_DATA]
        chosen = sorted(rng.sample(top, min(len(top), rng.randint(1, 6)))) if top else []
        tail = b"".join(bytes(w.body[w.layout[i].start : w.layout[i].end]) for i in chosen)
    elif what == "junk":
        tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    elif what == "text-junk":
        values = sorted(src.planted.values()) or ["JUNK"]
        text = " ".join(rng.choice(values) for _ in range(3))
        tail = text.encode("utf-8")
        if len(tail) % 2:
            tail += b" "
    elif what == "dataset":
        tail = bytes(w.enc.body)
    else:
        other = encoding(rng.choice(list(SYNTHETIC)), "evrle")
        tail = other.head + other.body
    w.body += tail
    w.changed()
    w.notes.append(f"appended {what} ({len(tail)} bytes)")


def m_reorder(w: _Work, rng: random.Random) -> None:
    """Elements out of order: two siblings swapped, one moved, or a run reversed (any depth)."""
    candidates = [i for i in w.complete() if len(w.siblings(i)) >= 2]
    index = _choice(rng, candidates, lambda el: el.depth == 0, w)
    if index is None:
        return m_dup(w, rng)
    siblings = w.siblings(index)
    how = rng.choice(["swap", "move", "reverse"])
    first, last = w.layout[siblings[0]].start, w.layout[siblings[-1]].end
    chunks = [bytes(w.body[w.layout[i].start : w.layout[i].end]) for i in siblings]
    order = list(range(len(chunks)))
    if how == "swap":
        a, b = rng.sample(order, 2)
        order[a], order[b] = order[b], order[a]
    elif how == "move":
        a = order.pop(rng.randrange(len(order)))
        order.insert(rng.randrange(len(order) + 1), a)
    else:
        a = rng.randrange(len(order) - 1)
        b = rng.randrange(a + 2, len(order) + 1)
        order[a:b] = reversed(order[a:b])
    if order == sorted(order):  # moved back where it was: swap two instead
        a, b = rng.sample(order, 2)
        order[a], order[b] = order[b], order[a]
        how = "swap"
    # Keep any bytes between siblings (there are none in a well-formed container) in place.
    if sum(len(c) for c in chunks) == last - first:
        w.body[first:last] = b"".join(chunks[i] for i in order)
        w.changed()
        w.notes.append(f"reorder {how} among {len(chunks)} siblings at depth {w.layout[index].depth}")
    else:
        m_dup(w, rng)


def m_retag(w: _Work, rng: random.Random) -> None:
    """An element's tag changed: to an unknown public tag, a private tag without creator, a
    private creator slot, a group length, a tag of another VR, or past the pixel data."""
    index = _choice(rng, [i for i in w.complete() if w.layout[i].tag != PIXEL_DATA], _identifying, w)
    if index is None:
        return m_flip(w, rng)
    el = w.layout[index]
    group = el.tag >> 16
    how = rng.choice(["unknown", "private", "creator", "grouplength", "othervr", "afterpixel"])
    if how == "unknown":
        new = group << 16 | ((el.tag + 1) & 0xFFFF)
        for delta in range(1, 64):
            new = group << 16 | ((el.tag + delta) & 0xFFFF)
            if _vr_for(new) == "UN":
                break
    elif how == "private":
        new = (rng.choice([0x0009, 0x0011, 0x0029, 0x0043]) << 16) | rng.randrange(0x1000, 0xFFFF)
    elif how == "creator":
        new = (rng.choice([0x0009, 0x0019, 0x0029]) << 16) | rng.randrange(0x10, 0x100)
    elif how == "grouplength":
        new = group << 16
    elif how == "othervr":
        new = rng.choice([0x00280010, 0x00200013, 0x00181050, 0x00080016, 0x00540081])
    else:
        new = rng.choice([0x7FE10010, 0x7FE11001, 0xFFFAFFFA, 0xFFFCFFFC, 0x7FE00020])
    struct.pack_into(w.e + "HH", w.body, el.start, new >> 16, new & 0xFFFF)
    w.changed()
    w.notes.append(f"retag ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) -> ({new >> 16:04X},{new & 0xFFFF:04X}) {how}")


def m_vr(w: _Work, rng: random.Random) -> None:
    """Explicit VR: an element's VR changed, re-encoded consistently (UN, OB, UT) or only its
    two VR bytes overwritten (another VR, an invalid one)."""
    if w.enc.implicit:
        return m_retag(w, rng)
    index = _choice(rng, [i for i in w.complete() if w.layout[i].tag != PIXEL_DATA], _identifying, w)
    if index is None:
        return m_flip(w, rng)
    el = w.layout[index]
    how = rng.choice(["UN", "OB", "UT", "bytes", "invalid"])
    if how in ("UN", "OB", "UT") and el.length != UNDEFINED:
        value = bytes(w.body[el.vstart : el.end])
        header = struct.pack(w.e + "HH", el.tag >> 16, el.tag & 0xFFFF) + how.encode() + b"\x00\x00"
        header += struct.pack(w.e + "I", len(value))
        w.body[el.start : el.end] = header + value
    elif how == "bytes" or el.length == UNDEFINED:
        new_vr = rng.choice([v for v in ("SH", "LO", "UI", "DA", "US", "SQ", "PN", "CS", "LT", "OW", "AT") if v != el.vr])
        w.body[el.start + 4 : el.start + 6] = new_vr.encode()
        how = f"bytes->{new_vr}"
    else:
        w.body[el.start + 4 : el.start + 6] = rng.choice([b"\x00\x00", b"??", b"zz", b"  ", b"\xff\xfe"])
    w.changed()
    w.notes.append(f"VR of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) {el.vr} -> {how}")


def m_tslie(w: _Work, rng: random.Random) -> None:
    """The file meta lies about the transfer syntax, or is missing, or its group length is wrong."""
    how = rng.choice(["syntax", "syntax", "bare", "nopreamble", "grouplength"]) if w.head else "syntax"
    if how == "syntax":
        src = w.enc.source
        true = _SYNTAXES.get(w.enc.syntax) or src.original_syntax or (
            ImplicitVRLittleEndian if w.enc.implicit else ExplicitVRLittleEndian if w.enc.little else ExplicitVRBigEndian)
        other = rng.choice([u for u in list(_SYNTAXES.values()) + ["1.2.840.10008.1.2.4.50", "1.2.3.4"] if u != true])
        w.head = bytearray(_quiet(lambda: _head(_meta_for(src, other))))
        w.notes.append(f"meta says {other}")
    elif how == "bare":
        w.head = bytearray()
        if w.enc.deflated:
            w.enc = Encoding(w.enc.source, w.enc.syntax, b"", w.enc.body, w.enc.implicit, w.enc.little, False)
        w.notes.append("no preamble, no meta")
    elif how == "nopreamble":
        del w.head[:128]
        w.notes.append("no preamble")
    else:
        (length,) = struct.unpack_from("<I", w.head, 140)
        new = max(0, length + rng.choice([-12, -2, 2, 8, 100, -length]))
        struct.pack_into("<I", w.head, 140, new)
        w.notes.append(f"meta group length {length} -> {new}")


_SINGLE = {
    "trunc": m_trunc, "flip": m_flip, "multiflip": m_multiflip, "inflate": m_inflate, "ffffe": m_ffffe,
    "undelim": m_undelim, "dup": m_dup, "append": m_append, "reorder": m_reorder, "retag": m_retag,
    "vr": m_vr, "tslie": m_tslie,
}  # fmt: skip
# Combinations: structure first, then bytes, then the cut.
_COMBO_ORDER = ["tslie", "reorder", "dup", "retag", "vr", "inflate", "ffffe", "undelim", "append", "flip",
                "multiflip", "trunc"]  # fmt: skip


def m_combo(w: _Work, rng: random.Random) -> None:
    """Two or three kinds of damage on the same file."""
    kinds = rng.sample([k for k in _COMBO_ORDER if k != "tslie" or rng.random() < 0.3], rng.randint(2, 3))
    for kind in sorted(kinds, key=_COMBO_ORDER.index):
        _SINGLE[kind](w, rng)


def m_clean(w: _Work, rng: random.Random) -> None:
    """No damage: the encoding as it is (a baseline for the leak checks)."""


MUTATORS: dict[str, Callable[[_Work, random.Random], None]] = {"clean": m_clean, **_SINGLE, "combo": m_combo}

#: Variants per encoding (source x transfer syntax), by kind.
KIND_COUNTS = {
    "clean": 1, "trunc": 4, "flip": 3, "multiflip": 2, "inflate": 2, "ffffe": 1, "undelim": 1, "dup": 2,
    "append": 2, "reorder": 2, "retag": 2, "vr": 1, "tslie": 1, "combo": 3,
}  # fmt: skip


# --- variants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    id: str
    source: Source
    syntax: str
    kind: str
    data: bytes  # the damaged file, as the engine gets it
    plain: bytes  # the same, deflated stream inflated (as far as it inflates): what survival is checked in
    notes: tuple[str, ...]  # what was done, offsets only


def variant_ids() -> list[str]:
    """Every variant id, in a fixed order (cheap: only the sources are built)."""
    ids = []
    for name in source_names():
        for enc in encodings(name):
            for kind, count in KIND_COUNTS.items():
                if kind == "vr" and enc.implicit:
                    kind = "retag"
                    offset = KIND_COUNTS["retag"]
                else:
                    offset = 0
                for n in range(count):
                    ids.append(f"{name}.{enc.syntax}-{kind}-{offset + n:04d}")
    return ids


def _seed(variant_id: str) -> int:
    return int.from_bytes(hashlib.sha256(variant_id.encode()).digest()[:8], "big")


def build(variant_id: str) -> Variant:
    """The variant of that id: the same bytes on every run and every machine."""
    name, rest = variant_id.split(".", 1)
    syntax, kind, _n = rest.rsplit("-", 2)
    enc = encoding(name, syntax)
    rng = random.Random(_seed(variant_id))
    w = _Work(enc, bytearray(enc.head), bytearray(enc.body))
    MUTATORS[kind](w, rng)
    head = bytes(w.head)
    if w.body_dropped:
        data = plain = head
    else:
        body = bytes(w.body)
        tail = _deflate(body) if w.enc.deflated else body
        final = bytearray(head + tail)
        for op in w.raw_ops:
            op(final, len(head))
        data = bytes(final)
        plain = head + inflate_tolerant(data[len(head) :]) if w.enc.deflated else data
    return Variant(variant_id, enc.source, syntax, kind, data, plain, tuple(w.notes))


def iter_variants(ids: list[str]) -> Iterator[Variant]:
    for vid in ids:
        yield build(vid)


def python_codecs(charset: tuple[str, ...]) -> list[str]:
    """Python codec names of a Specific Character Set (unknown terms are skipped)."""
    out = []
    for term in charset:
        try:
            out += convert_encodings([term]) if term else []
        except Exception:
            continue
    return [c for c in dict.fromkeys(out) if c]


def encoded_forms(value: str, charset: tuple[str, ...]) -> set[bytes]:
    """`value` as the source's character set encodes it, and in UTF-8 and Latin-1 when it can."""
    forms = set()
    try:
        forms.add(encode_string(value, convert_encodings(list(charset) or None)))
    except Exception:
        pass
    for codec in ["utf-8", "latin-1", *python_codecs(charset)]:
        try:
            forms.add(value.encode(codec))
        except (UnicodeEncodeError, LookupError):
            pass
    return {f for f in forms if f}
