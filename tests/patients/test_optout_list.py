"""The opt-out file as a trust exports it, the keyed tokens it becomes, the identifiers an image
carries, and whether delivery waits for a current list."""

from __future__ import annotations

import codecs
import io
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from agent import optout
from agent.keys import SiteKey
from agent.optout import OptOutFile, OptOutListError, OptOutPolicy, read_list
from tests.conftest import shipped

NHS = "9434765919"
HOSPITAL = "RXX100001"


def _file(tmp_path: Path, data: bytes | str, name: str = "optout.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _normalised(listed: OptOutFile) -> set[str]:
    return {optout.normalise(i) for i in listed.identifiers}


# -- read_list -----------------------------------------------------------------------------------


def test_one_identifier_per_line_and_blank_lines_skipped(tmp_path: Path) -> None:
    listed = read_list(_file(tmp_path, f"{NHS}\n\n   \n{HOSPITAL}\n\n"))
    assert _normalised(listed) == {NHS, HOSPITAL}
    assert listed.header_skipped is False


@pytest.mark.parametrize("header", ["NHS Number", "patient_id", "PatientID", "Hospital Number", '"NHS Number"'])
def test_a_header_line_is_skipped_and_reported(tmp_path: Path, header: str) -> None:
    listed = read_list(_file(tmp_path, f"{header}\n{NHS}\n{HOSPITAL}\n"))
    assert listed.header_skipped is True
    assert _normalised(listed) == {NHS, HOSPITAL}


@pytest.mark.parametrize("first", [NHS, HOSPITAL, "943 476 5919", "rxx100001"])
def test_a_first_line_that_is_an_identifier_is_kept(tmp_path: Path, first: str) -> None:
    """The first patient on the list is never taken for a header (and so never sent)."""
    listed = read_list(_file(tmp_path, f"{first}\nRXX100002\n"))
    assert listed.header_skipped is False
    assert optout.normalise(first) in _normalised(listed)
    assert len(listed.identifiers) == 2


def test_csv_lines_give_every_field(tmp_path: Path) -> None:
    listed = read_list(_file(tmp_path, f'NHS Number,Patient ID\n{NHS},{HOSPITAL}\n"4010232137";RXX100002\n'
                                       f"RXX100003\tRXX100004|RXX100005\n"))
    assert listed.header_skipped is True
    assert _normalised(listed) == {NHS, HOSPITAL, "4010232137", "RXX100002", "RXX100003", "RXX100004", "RXX100005"}


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    listed = read_list(_file(tmp_path, codecs.BOM_UTF8 + f"NHS Number\r\n{NHS}\r\n{HOSPITAL}\r\n\r\n".encode()))
    assert listed.header_skipped is True  # the BOM does not make the header look like data
    assert listed.identifiers == frozenset({NHS, HOSPITAL})  # no "\r", no "\ufeff" left on any of them


def test_windows_1252(tmp_path: Path) -> None:
    """Excel on Windows writes Windows-1252: "Nº" in the header is not UTF-8, the file is still read."""
    listed = read_list(_file(tmp_path, f"NHS Nº\r\n{NHS}\r\n{HOSPITAL}\r\n".encode("cp1252")))
    assert listed.header_skipped is True
    assert _normalised(listed) == {NHS, HOSPITAL}


def test_utf16_is_read_never_taken_as_garbage(tmp_path: Path) -> None:
    """Excel's "Unicode text" is UTF-16: read as Windows-1252 it gave identifiers with NULs in
    them, which matched nobody, and every patient on the list would have been sent."""
    for encoding in ("utf-16", "utf-16-be"):
        data = f"NHS Number\r\n{NHS}\r\n{HOSPITAL}\r\n".encode(encoding)
        if encoding == "utf-16-be":
            data = codecs.BOM_UTF16_BE + data
        listed = read_list(_file(tmp_path, data))
        assert listed.header_skipped is True
        assert listed.identifiers == frozenset({NHS, HOSPITAL})


def test_nul_characters_are_refused(tmp_path: Path) -> None:
    """UTF-16 without a BOM (or any binary file) is not a list of identifiers."""
    with pytest.raises(OptOutListError, match="NUL"):
        read_list(_file(tmp_path, f"{NHS}\r\n{HOSPITAL}\r\n".encode("utf-16-le")))


def test_an_over_long_line_is_refused_by_number_without_its_content(tmp_path: Path) -> None:
    secret = "Plantedsurname " * 10
    path = _file(tmp_path, f"{NHS}\n\n{HOSPITAL}\n{secret}\n")
    with pytest.raises(OptOutListError) as refused:
        read_list(path)
    message = str(refused.value)
    assert "line 4" in message
    assert "Plantedsurname".casefold() not in message.casefold()
    assert NHS not in message and HOSPITAL not in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptOutListError, match="cannot read"):
        read_list(tmp_path / "absent.csv")


def test_spaces_hyphens_and_case_are_one_identifier(site_key: SiteKey) -> None:
    assert optout.normalise("943 476 5919") == optout.normalise("943-476-5919") == optout.normalise(NHS) == NHS
    assert optout.normalise("rxx100001") == optout.normalise(" RXX100001 ") == HOSPITAL
    assert optout.token(site_key, "943 476 5919") == optout.token(site_key, "943-476-5919") == optout.token(site_key, NHS)
    assert optout.token(site_key, "rxx100001") == optout.token(site_key, HOSPITAL)
    listed = optout.tokens(site_key, ["943 476 5919"])
    assert optout.matcher(site_key, listed)("943-476-5919")
    assert not optout.matcher(site_key, listed)("9434765918")
    assert not optout.matcher(site_key, frozenset())(NHS)


# -- tokens --------------------------------------------------------------------------------------


def test_tokens_are_keyed_and_never_the_value(site_key: SiteKey, other_key: SiteKey) -> None:
    mine, theirs = optout.token(site_key, NHS), optout.token(other_key, NHS)
    assert mine != theirs
    assert NHS not in mine and NHS not in theirs
    assert len(mine) == 64 and int(mine, 16) >= 0  # a hex HMAC-SHA256
    assert optout.token(site_key, HOSPITAL) != mine
    assert optout.token(site_key, "  ") == "" and optout.token(site_key, "") == ""
    assert optout.tokens(site_key, [NHS, "943 476 5919", "", " "]) == frozenset({mine})


def test_identifiers_of_reads_every_patient_identifier() -> None:
    ds = Dataset()
    ds.PatientID = HOSPITAL
    ds.OtherPatientIDs = ["OLD-1", "943 476 5919"]
    first, second = Dataset(), Dataset()
    first.PatientID = NHS
    second.PatientID = "RYY7"
    ds.OtherPatientIDsSequence = [first, second]
    assert optout.identifiers_of(ds) == {HOSPITAL, "OLD-1", "943 476 5919", NHS, "RYY7"}
    assert optout.identifiers_of(Dataset()) == set()
    empty = Dataset()
    empty.PatientID = ""
    assert optout.identifiers_of(empty) == set()


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element, explicit VR little endian, as it lies in a file."""
    if vr == b"SQ":
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


@pytest.mark.parametrize("damaged", [
    _element(0x0010, 0x0020, b"FD", b"\x01\x02\x03"),  # a Patient ID of 3 bytes of an 8-byte float
    _element(0x0010, 0x1002, b"SQ", b"\x00\x01"),  # an Other Patient IDs Sequence that is not an item
])
def test_an_identifier_element_that_cannot_be_read_is_not_taken_as_not_listed(damaged: bytes) -> None:
    """The NHS number may be in the element that does not read: not knowing is not "not on the
    list" (the daemon quarantines such an instance, reason unreadable)."""
    data = damaged + _element(0x0010, 0x1000, b"LO", NHS.encode())
    ds = dcmread(io.BytesIO(data), force=True)
    with pytest.raises(optout.IdentifiersUnreadable):
        optout.identifiers_of(ds)


# -- the policy ----------------------------------------------------------------------------------


def test_policy_not_required_never_holds() -> None:
    assert OptOutPolicy(required=False, max_age_days=7).problem(None) is None
    assert OptOutPolicy(required=False, max_age_days=7).problem(0.0, now=1e9) is None


def test_policy_required_and_never_imported_names_the_command() -> None:
    problem = OptOutPolicy(required=True, max_age_days=7).problem(None)
    assert problem is not None and "optout import" in problem


def test_policy_required_and_too_old_names_the_setting() -> None:
    now = 1_800_000_000.0
    problem = OptOutPolicy(required=True, max_age_days=7).problem(now - 8 * 86_400, now=now)
    assert problem is not None and "optout.max_age_days" in problem and "8 days" in problem


def test_policy_required_and_fresh_lets_delivery_go() -> None:
    now = 1_800_000_000.0
    assert OptOutPolicy(required=True, max_age_days=7).problem(now - 6 * 86_400, now=now) is None
    assert OptOutPolicy(required=True, max_age_days=7).problem(now, now=now) is None


@pytest.mark.parametrize(("profile", "required"), [("nmip", True), ("nccid", True), ("basic", False)])
def test_shipped_profiles_say_whether_the_list_is_mandatory(profile: str, required: bool) -> None:
    from agent.deidentify.profile import optout_required

    assert shipped(profile).optout_required is required
    assert optout_required(profile) is required


@pytest.mark.parametrize("line", ["9434765919 Smith", "SMITH 9434765919", "9.43477E+09", "9.4E9"])
def test_a_line_that_would_match_nobody_refuses_the_import_without_quoting_it(tmp_path: Path, line: str) -> None:
    """An identifier run into a name, or an NHS number a spreadsheet shortened, would match no
    patient and let their data go: the import is refused, naming the line, not its content."""
    path = tmp_path / "optouts.txt"
    path.write_text(f"NHS Number\n4010232137\n{line}\n")
    with pytest.raises(OptOutListError, match="line 3") as refused:
        read_list(path)
    assert "9434765919" not in str(refused.value) and "SMITH" not in str(refused.value).upper().replace(
        "SPREADSHEET", "")


def test_spaced_nhs_numbers_and_prefixed_hospital_numbers_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "optouts.txt"
    path.write_text("943 476 5919\nRXX 100001\n")
    assert read_list(path).identifiers == {"943 476 5919", "RXX 100001"}
