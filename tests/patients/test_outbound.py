"""What leaves after a patient opts out: a queued clinical batch without their rows, and a
retraction notice that names the pseudonymous study and nothing else."""

from __future__ import annotations

import csv
import io
import json

from agent.forward.outbound import retraction_notice, without_pseudonyms

BODY = ('patient_pseudonym,note,crp_mg_l\r\n'
        'PSEUDO-A,"first line\r\nPSEUDO-B,second line",12\r\n'  # a cell spanning two lines, one like a row of B
        'PSEUDO-B,plain,13\r\n'
        'PSEUDO-C,"comma, and ""quotes""",14\r\n'
        'PSEUDO-B,again,15\r\n').encode()


def _records(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def test_only_the_listed_pseudonyms_rows_go() -> None:
    body, removed = without_pseudonyms(BODY, {"PSEUDO-B"})
    assert removed == 2
    assert _records(body) == [["patient_pseudonym", "note", "crp_mg_l"],
                              ["PSEUDO-A", "first line\r\nPSEUDO-B,second line", "12"],
                              ["PSEUDO-C", 'comma, and "quotes"', "14"]]
    assert body.startswith(b"patient_pseudonym,note,crp_mg_l\r\n")


def test_a_batch_without_listed_patients_is_sent_as_it_is() -> None:
    assert without_pseudonyms(BODY, set()) == (BODY, 0)
    assert without_pseudonyms(BODY, {"PSEUDO-Z", "first line"}) == (BODY, 0)


def test_every_row_of_the_batch_can_go() -> None:
    body, removed = without_pseudonyms(BODY, {"PSEUDO-A", "PSEUDO-B", "PSEUDO-C"})
    assert removed == 4
    assert _records(body) == [["patient_pseudonym", "note", "crp_mg_l"]]


def test_a_retraction_notice_names_the_study_and_no_patient() -> None:
    notice = json.loads(retraction_notice("2.25.123456789", "0123456789abcdef"))
    assert notice["study_instance_uid"] == "2.25.123456789"
    assert notice["reason"] == "opt_out" and notice["key_id"] == "0123456789abcdef"
    assert set(notice) == {"retraction_version", "study_instance_uid", "reason", "retracted_at", "key_id",
                           "agent_version"}
