"""Free text is safe by construction under nccid, and the release gate is a second opinion.

The corpus (tests/verify/corpus.py) plants identifiers that the source's structured attributes do
not name. Under `nccid` none may leave, and most files must still be written: quarantining what
could have been cleaned is a failure too. With cleaning switched off, the gate alone must refuse
every case it can see.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from agent.deidentify import load_profile
from agent.keys import SiteKey
from agent.process import InstanceProcessor, Outcome
from agent.quarantine import Reason
from tests.conftest import PROFILES_DIR, encode, shipped
from tests.verify.corpus import CASES, Case, build


def _texts(ds: Dataset) -> Iterator[str]:
    """Every value of `ds` at any depth, decoded, file meta included."""
    for elem in list(getattr(ds, "file_meta", Dataset()).values()) + list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif isinstance(elem.value, bytes):
            yield elem.value.decode("latin-1")
            yield elem.value.decode("utf-8", "replace")
        elif elem.value is not None:
            yield str(elem.value)


def leaks(case: Case, encoded: bytes) -> list[str]:
    """The planted strings of `case` found in an output, decoded or as bytes in any of its encodings."""
    out = dcmread(io.BytesIO(encoded))
    decoded = "\n".join(_texts(out)).lower()
    codecs = ["utf-8", "latin-1"] + (list(convert_encodings(case.charset)) if case.charset else [])
    found = []
    for planted in case.planted:
        as_bytes = {planted.encode(c, "ignore") for c in codecs} | {planted.upper().encode(c, "ignore") for c in codecs}
        if planted.lower() in decoded or any(b and b in encoded for b in as_bytes):
            found.append(planted)
    return found


@pytest.fixture(scope="module")
def outcomes(site_key: SiteKey) -> dict[str, Outcome]:
    processor = InstanceProcessor(shipped("nccid"), site_key)
    return {case.name: processor.process(encode(build(case)), case.name) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_no_planted_identifier_leaves(case: Case, outcomes: dict[str, Outcome]) -> None:
    """Under nccid, whatever is written holds none of the planted identifiers."""
    outcome = outcomes[case.name]
    if outcome.status == "passed":
        assert outcome.encoded is not None
        assert leaks(case, outcome.encoded) == []
    else:
        assert outcome.status == "quarantined" and outcome.refusal is not None
        assert outcome.refusal.reason is Reason.RESIDUAL_IDENTIFIER, outcome.refusal


def test_most_of_the_corpus_is_still_written(outcomes: dict[str, Outcome]) -> None:
    """At least 80% of the corpus is cleaned and written, not quarantined."""
    written = [name for name, o in outcomes.items() if o.status == "passed"]
    held = {name: o.refusal.detail for name, o in outcomes.items() if o.status != "passed" and o.refusal}
    assert len(written) >= 0.8 * len(outcomes), held


def test_descriptor_keeps_its_imaging_words(outcomes: dict[str, Outcome]) -> None:
    """"CT CHEST WITH CONTRAST - Dr Helen Brookes" keeps "CT CHEST WITH CONTRAST"."""
    out = dcmread(io.BytesIO(outcomes["descriptor_with_doctor"].encoded or b""))
    assert str(out.StudyDescription).startswith("CT CHEST WITH CONTRAST")
    assert "*" in str(out.StudyDescription)


def test_sequences_keep_no_original_item(outcomes: dict[str, Outcome]) -> None:
    """Z empties, X removes and D leaves one dummied item: no staff member survives in a sequence."""
    out = dcmread(io.BytesIO(outcomes["operator_identification"].encoded or b""))
    operator = out.get("OperatorIdentificationSequence")
    assert operator is None or len(operator) <= 1
    if operator:
        assert "ramanathan" not in "\n".join(_texts(operator[0])).lower()
    out = dcmread(io.BytesIO(outcomes["institution_code_meaning"].encoded or b""))
    assert "thornbury" not in "\n".join(_texts(out)).lower()


def test_person_names_outside_the_table_are_replaced(outcomes: dict[str, Outcome]) -> None:
    """PN attributes that Table E.1-1 does not list are dummied under nccid, not kept verbatim."""
    out = dcmread(io.BytesIO(outcomes["person_names_outside_table"].encoded or b""))
    for tag in (0x0040A067, 0x00140104):
        assert tag not in out or "ANONYMIZED" in str(out[tag].value)


@pytest.fixture(scope="module")
def gate_alone(site_key: SiteKey, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case], Outcome]:
    """nccid with the planted places kept by a site recipe, and text cleaning switched off."""
    folder = tmp_path_factory.mktemp("gate_alone")
    processors: dict[tuple[str, ...], InstanceProcessor] = {}

    def run(case: Case) -> Outcome:
        if case.keep not in processors:
            recipe = folder / f"deid.site{len(processors)}"
            recipe.write_text("FORMAT dicom\n\n%header\n\n" + "".join(f"KEEP {tag}\n" for tag in case.keep))
            manifest = folder / f"site{len(processors)}.yaml"
            base = (PROFILES_DIR / "nccid.yaml").read_text().replace("  - deid.nccid", f"  - {PROFILES_DIR}/deid.nccid\n  - {recipe}")
            base = base.replace("  - ps3.15/", f"  - {PROFILES_DIR}/ps3.15/")
            manifest.write_text(base)
            processors[case.keep] = InstanceProcessor(load_profile(str(manifest)), site_key, clean_text=False)
        return processors[case.keep].process(encode(build(case)), case.name)

    return run


@pytest.mark.parametrize("case", [c for c in CASES if c.gate_can_see], ids=[c.name for c in CASES if c.gate_can_see])
def test_gate_alone_refuses_every_planted_case(case: Case, gate_alone: Callable[[Case], Outcome]) -> None:
    """With cleaning switched off, the release gate still refuses each planted identifier."""
    outcome = gate_alone(case)
    assert outcome.status == "quarantined", f"{case.name} passed the gate: {leaks(case, outcome.encoded or b'')}"
    assert outcome.refusal is not None and outcome.refusal.reason is Reason.RESIDUAL_IDENTIFIER
    for planted in case.planted:
        assert planted.lower() not in outcome.refusal.detail.lower()


def test_corpus_cases_are_distinct() -> None:
    assert len({c.name for c in CASES}) == len(CASES) and Path(__file__).exists()
