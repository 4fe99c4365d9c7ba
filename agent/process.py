"""One instance through the stages: read, screen, de-identify, encode, verify.

`check`, `anonymise` and (later) the daemon all call `InstanceProcessor.process`, so what the
dry run shows is exactly what the service would release.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from agent import optout
from agent.deidentify import DeidentifiedInstance, Deidentifier, Profile, Refused, burnedin
from agent.deidentify.masking import PixelsUndecodable
from agent.deidentify.ocr import OcrUnavailable
from agent.deidentify.scope import exclusion
from agent.errors import UnreadableInput
from agent.keys import SiteKey
from agent.limits import LimitExceeded, Limits, time_limit
from agent.quarantine import Reason, Refusal
from agent.verify import screen, verify_output, verify_pixels

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_DEFERRED = 1 << 16  # reading a header only: values longer than this stay on disk (or in the buffer)

Status = Literal["passed", "excluded", "quarantined", "skipped"]


@dataclass
class Outcome:
    """What became of one source instance. `encoded` is set only when the gate passed it;
    `refusal` says why it was quarantined or, with status `excluded`, why it is out of scope;
    `series_key` names its source series (keyed, as `opaque_name`), for holding back by series."""

    status: Status
    refusal: Refusal | None = None
    result: DeidentifiedInstance | None = None
    encoded: bytes | None = None
    opaque_name: str = ""
    skip_reason: str = ""
    series_key: str = ""
    patient_tokens: frozenset[str] = frozenset()  # keyed, for the opt-out list (agent/optout.py)
    patient_link: str = ""  # the patient's pseudonym, "" when the Patient ID names nobody in particular

    @property
    def relative_path(self) -> Path:
        """Where the output goes: pseudonymous identifiers only, never anything of the input path."""
        assert self.result is not None
        ds = self.result.dataset
        return Path(self.result.patient_pseudonym, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                    f"{ds.SOPInstanceUID}.dcm")


def read_dataset(data: bytes, where: object) -> Dataset:
    """Parse a DICOM file (Part 10, or a bare dataset as some old exports write them)."""
    try:
        return dcmread(io.BytesIO(data))
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom raises many types, and its messages can quote values
        raise UnreadableInput(where, exc) from None
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise UnreadableInput(where, exc) from None
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise UnreadableInput(where, "no DICOM preamble and no SOP Class/Instance UID")
    return ds


def read_header(path: Path) -> Dataset:
    """The header of a file too large to read whole: up to the pixel data, long values left unread."""
    try:
        return dcmread(path, stop_before_pixels=True, force=True, defer_size=_DEFERRED)
    except Exception as exc:  # pydicom raises many types, and its messages can quote values
        raise UnreadableInput(path.name, exc) from None


class InstanceProcessor:
    """Built once per process (it compiles the profile's key material); `process` per instance."""

    def __init__(self, profile: Profile, key: SiteKey, *, clean_text: bool = True, limits: Limits = Limits()) -> None:
        """`clean_text=False` switches text cleaning off, to test that the gate alone refuses."""
        self.profile = profile
        self.limits = limits
        self.key = key
        # Set by the daemon's workers: is this patient (tokens, link) on the opt-out list now?
        # Then nothing more is done with the instance. The pipeline decides again when it records it.
        self.opted_out: Callable[[frozenset[str], str], bool] | None = None
        self.deidentifier = Deidentifier(profile, key, clean_text=clean_text, limits=limits)
        self.pixels = burnedin.PixelCleaner(profile, self.deidentifier.scanner)

    def process(self, data: bytes, where: object, *, record: bool = False) -> Outcome:
        """Run `data` (the source file's bytes) through every stage; raises UnreadableInput only.

        pydicom's warnings about damaged input are silenced here: they quote the values they
        complain about, and the verdict (unreadable, quarantined) already says what went wrong.
        Not thread-safe (warning filters are global): one processor per process, as the workers are.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(data) > self.limits.max_instance_mb << 20:
                return self._too_large(data, where)
            return self._process(data, where, record=record)

    def _too_large(self, data: bytes, where: object) -> Outcome:
        """Refused from its header alone: nothing past the pixel data's tag is read."""
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, defer_size=_DEFERRED)
            opaque = self.deidentifier.pseudonyms.opaque_name(str(ds.SOPInstanceUID))
        except Exception as exc:  # no SOP Instance UID to file it by
            raise UnreadableInput(where, exc) from None
        return self.too_large(ds, len(data), opaque)

    def too_large(self, header: Dataset, size: int, opaque: str) -> Outcome:
        """An instance past `max_instance_mb`, judged by its header: excluded when out of scope
        (a long video the profile does not take), quarantined otherwise."""
        series = self.series_key(header)
        patient = self._patient(header, opaque, series)
        if isinstance(patient, Outcome):
            return patient
        excluded = self._exclusion(header)
        if excluded is not None:
            return Outcome("excluded", refusal=excluded, opaque_name=opaque, series_key=series,
                           patient_tokens=patient[0], patient_link=patient[1])
        refusal = Refusal(Reason.RESOURCE_LIMIT, f"max_instance_mb: {size >> 20} MB")
        return Outcome("quarantined", refusal=refusal, opaque_name=opaque, series_key=series,
                       patient_tokens=patient[0], patient_link=patient[1])

    def _patient(self, ds: Dataset, opaque: str, series: str) -> tuple[frozenset[str], str] | Outcome:
        """The patient's opt-out tokens and link; an Outcome instead when the instance goes no
        further: excluded (the patient is on the opt-out list) or quarantined (an identifier
        element cannot be read, so whether they are cannot be told)."""
        try:
            identifiers = optout.identifiers_of(ds)
        except optout.IdentifiersUnreadable as exc:
            if self.opted_out is None:  # a dry run or a batch: no list is checked
                return frozenset(), ""
            refusal = Refusal(Reason.UNREADABLE, f"{exc}: cannot be read, so the opt-out list cannot be checked")
            return Outcome("quarantined", refusal=refusal, opaque_name=opaque, series_key=series)
        tokens = optout.tokens(self.key, identifiers)
        patient_id = str(ds.get("PatientID", "") or "")
        link = "" if optout.is_placeholder(patient_id) else \
            self.deidentifier.pseudonyms.patient_pseudonym(patient_id)
        if self.opted_out is not None and self.opted_out(tokens, link):
            return Outcome("excluded", refusal=Refusal(Reason.OPTED_OUT, "the patient is on the opt-out list"),
                           opaque_name=opaque, series_key=series, patient_tokens=tokens, patient_link=link)
        return tokens, link

    def series_key(self, ds: Dataset) -> str:
        """The source series' keyed name ("" when it has none a string can be made of)."""
        try:
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        except Exception:  # a damaged value: no series to name it by
            return ""
        return self.deidentifier.pseudonyms.opaque_name(uid) if uid else ""

    def _exclusion(self, ds: Dataset) -> Refusal | None:
        try:
            return exclusion(ds, self.profile.sop_classes, self.profile.exclude, self.profile.name)
        except Exception:  # a damaged SOP Class UID or matched value: the gate decides, and refuses
            return None

    def _clean_pixels(self, ds: Dataset, decision: burnedin.PixelDecision,
                      result: DeidentifiedInstance) -> burnedin.PixelReport | None:
        """Mask what the region rules and OCR find; raises Refused when that cannot be done safely."""
        if decision.risk is None and decision.regions is None and not decision.embedded_overlay:
            return None
        try:
            report = self.pixels.clean(ds, decision, result.identifiers)
        except PixelsUndecodable as exc:
            raise Refused(Refusal(Reason.PIXELS_UNDECODABLE, f"pixels to be cleaned: {exc}")) from None
        except OcrUnavailable as exc:
            reason = decision.risk.reason if decision.risk else Reason.BURNED_IN_RISK
            detail = decision.risk.detail if decision.risk else "burned-in text"
            raise Refused(Refusal(reason, f"{detail}; OCR cannot read it: {exc}")) from None
        if report.masked:
            self.deidentifier.mark_pixels_cleaned(ds, result.changes)
        return report

    def _process(self, data: bytes, where: object, *, record: bool) -> Outcome:
        ds = read_dataset(data, where)
        try:
            meta = getattr(ds, "file_meta", None)
            if meta is not None and meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                return Outcome("skipped", skip_reason="DICOMDIR (its records hold identifiers)")
            if "SOPInstanceUID" not in ds:
                raise UnreadableInput(where, "no SOP Instance UID")
            opaque = self.deidentifier.pseudonyms.opaque_name(str(ds.SOPInstanceUID))
        except UnreadableInput:
            raise
        except Exception as exc:  # a damaged meta group or UID: pydicom raises many types, quoting values
            raise UnreadableInput(where, exc) from None
        series = self.series_key(ds)
        patient = self._patient(ds, opaque, series)  # first: an opted-out patient's instance goes no further
        if isinstance(patient, Outcome):
            return patient
        excluded = self._exclusion(ds)  # scope next: nothing more is done with what is not taken
        if excluded is not None:
            return Outcome("excluded", refusal=excluded, opaque_name=opaque, series_key=series,
                           patient_tokens=patient[0], patient_link=patient[1])
        outcome = self._deidentify(ds, opaque, record=record)
        outcome.series_key, (outcome.patient_tokens, outcome.patient_link) = series, patient
        return outcome

    def _deidentify(self, ds: Dataset, opaque: str, *, record: bool) -> Outcome:
        refusal: Refusal | None = None
        try:
            with time_limit(self.limits.instance_seconds):
                self.deidentifier.check_limits(ds)
                decision = burnedin.decide(ds, self.profile)  # from the source's header, before it changes
                refusal = screen(ds, self.profile, decision)
                if refusal is not None and not record:
                    return Outcome("quarantined", refusal=refusal, opaque_name=opaque)
                result = self.deidentifier.deidentify(ds, record=record)
                if refusal is None:
                    result.pixels = self._clean_pixels(ds, decision, result)
                elif decision.risk is not None:  # a dry run shows the image it refused, unmasked
                    result.pixels = burnedin.PixelReport(risk=decision.risk, note=decision.note,
                                                         rules=decision.regions.labels if decision.regions else ())
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                encoded = buffer.getvalue()
                gate = verify_output(encoded, result, self.profile, self.deidentifier.scanner)
                if gate is None and refusal is None:
                    gate = verify_pixels(encoded, result, self.profile, self.pixels)
        except Refused as exc:
            return Outcome("quarantined", refusal=refusal or exc.refusal, opaque_name=opaque)
        except LimitExceeded as exc:
            return Outcome("quarantined", refusal=Refusal(Reason.RESOURCE_LIMIT, str(exc)), opaque_name=opaque)
        except (MemoryError, RecursionError) as exc:
            limit = "worker_memory_mb" if isinstance(exc, MemoryError) else "max_depth"
            return Outcome("quarantined", refusal=Refusal(Reason.RESOURCE_LIMIT, f"{limit}: {type(exc).__name__}"),
                           opaque_name=opaque)
        except Exception as exc:  # a dataset the engine could not handle must not leave
            failed = Refusal(Reason.DEIDENTIFICATION_FAILED, f"{type(exc).__name__} while de-identifying")
            return Outcome("quarantined", refusal=refusal or failed, opaque_name=opaque)
        refusal = refusal or gate
        if refusal is not None:
            return Outcome("quarantined", refusal=refusal, result=result, opaque_name=opaque)
        return Outcome("passed", result=result, encoded=encoded, opaque_name=opaque)
