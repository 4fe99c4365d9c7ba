"""Region rules: deid's graylist language, matched on a header, giving the rectangles to cover."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from agent.deidentify.regions import load, match
from agent.errors import ProfileError


def _rules(tmp_path: Path, text: str, name: str = "site.pixels", modalities: frozenset[str] = frozenset()):
    path = tmp_path / name
    path.write_text("FORMAT dicom\n\n%filter graylist\n\n" + text + "\n")
    return load(path, modalities)


def _header(**values: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "US"
    ds.Manufacturer = "Acme Medical"
    ds.ManufacturerModelName = "SONO 5"
    ds.Rows, ds.Columns = 100, 200
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _region(x0: int, y0: int, x1: int, y1: int) -> Dataset:
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    return region


def test_conditions_match_case_insensitively_and_give_rectangles(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "LABEL Sono\n  contains Manufacturer acme\n  + equals Rows 100\n  coordinates 0,0,200,10\n"
                             "  ctpcoordinates 150,10,50,20")
    found = match(_header(), rules, 100, 200)
    assert found is not None and found.labels == ("site.pixels: Sono",)
    assert found.mask[:10].all() and found.mask[10:30, 150:].all()
    assert not found.mask[10:30, :150].any() and not found.mask[30:].any()
    assert match(_header(Rows=101), rules, 101, 200) is None


def test_lines_combine_left_to_right(tmp_path: Path) -> None:
    """`a || b + c` is (a or b) and c; deid ANDs every line, which would drop the `||`."""
    rules = _rules(tmp_path, "LABEL L\n  contains Modality CT\n  || contains Modality US\n"
                             "  + contains ImageType PRIMARY\n  coordinates 0,0,10,10")
    assert match(_header(), rules, 100, 200) is not None
    assert match(_header(Modality="MR"), rules, 100, 200) is None
    assert match(_header(ImageType=["DERIVED"]), rules, 100, 200) is None


def test_presence_tests_and_unknown_attribute_names(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "LABEL P\n  missing OverlayDescription\n  + empty StationName\n  + present Manufacturer\n"
                             "  coordinates 0,0,10,10")
    assert match(_header(StationName=""), rules, 100, 200) is not None  # an unknown name is never present
    assert match(_header(StationName="US1"), rules, 100, 200) is None
    assert match(_header(), rules, 100, 200) is None  # missing is not empty


def test_flags_without_rectangles_are_left_out(tmp_path: Path) -> None:
    assert _rules(tmp_path, "LABEL Flag only\n  contains Modality US") == ()


def test_ultrasound_regions_are_uncovered_within_the_file_only(tmp_path: Path) -> None:
    ultrasound = _rules(tmp_path, "LABEL Blank\n  coordinates all\n\nLABEL Regions\n  present SequenceOfUltrasoundRegions\n"
                                  "  keepcoordinates from:SequenceOfUltrasoundRegions", "us.pixels")
    band = _rules(tmp_path, "LABEL Band\n  contains Manufacturer Acme\n  coordinates 0,0,200,20", "band.pixels")
    ds = _header(SequenceOfUltrasoundRegions=Sequence([_region(0, 10, 149, 89)]))
    found = match(ds, ultrasound + band, 100, 200)
    assert found is not None
    assert found.mask[:20].all()  # the band, though the region starts at row 10: another file's keep
    assert not found.mask[20:90, :150].any()  # the region, last row and column included
    assert found.mask[90:].all() and found.mask[:, 150:].all()


def test_a_file_that_would_cover_everything_is_left_out(tmp_path: Path) -> None:
    ultrasound = _rules(tmp_path, "LABEL Blank\n  coordinates all\n\nLABEL Regions\n  present SequenceOfUltrasoundRegions\n"
                                  "  keepcoordinates from:SequenceOfUltrasoundRegions", "us.pixels")
    found = match(_header(), ultrasound, 100, 200)  # no regions: a black image
    assert found is not None and not found.covers_anything and found.ignored == ("us.pixels: Blank",)
    band = _rules(tmp_path, "LABEL Band\n  contains Manufacturer Acme\n  coordinates 0,0,200,20", "band.pixels")
    found = match(_header(), ultrasound + band, 100, 200)
    assert found is not None and found.labels == ("band.pixels: Band",) and found.mask[:20].all() and not found.mask[20:].any()


def test_a_file_limited_to_modalities(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "LABEL All\n  coordinates 0,0,10,10", modalities=frozenset({"US"}))
    assert match(_header(), rules, 100, 200) is not None
    assert match(_header(Modality="CT"), rules, 100, 200) is None


@pytest.mark.parametrize("line", ["coordinates 0,0,10", "coordinates 10,0,5,5", "keepcoordinates from:ImageType",
                                  "coordinates a,b,c,d"])
def test_malformed_coordinates_name_the_file_and_label(tmp_path: Path, line: str) -> None:
    with pytest.raises((ProfileError, SystemExit)) as raised:
        _rules(tmp_path, f"LABEL Broken\n  contains Modality US\n  {line}")
    if raised.type is ProfileError:
        assert "site.pixels" in str(raised.value) and "Broken" in str(raised.value)


def test_a_bad_regular_expression_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a regular expression"):
        _rules(tmp_path, "LABEL Bad\n  contains Manufacturer (acme\n  coordinates 0,0,10,10")


def test_a_damaged_value_matches_nothing_and_a_long_one_is_not_read(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "LABEL L\n  contains Manufacturer acme\n  coordinates 0,0,10,10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of a value longer than its VR allows
        assert match(_header(Manufacturer="acme" + "x" * 5000), rules, 100, 200) is None


def test_values_line_up_with_the_tests_that_take_one(tmp_path: Path) -> None:
    """deid lists values only for tests that take one: `present Rows + notcontains Manufacturer
    ACME` must test the Manufacturer against ACME, not against nothing."""
    rules = _rules(tmp_path, "LABEL L\n  present Rows\n  + notcontains Manufacturer ACME\n  coordinates 0,0,10,10")
    assert match(_header(), rules, 100, 200) is None  # Acme Medical contains ACME
    assert match(_header(Manufacturer="Other"), rules, 100, 200) is not None


def test_a_line_deid_would_drop_is_an_error(tmp_path: Path) -> None:
    """deid drops a misspelt test without a word; the rule would then match every image."""
    with pytest.raises(ProfileError, match=r"site.pixels:6: not a line deid reads"):
        _rules(tmp_path, "LABEL L\n  contain Modality US\n  coordinates 0,0,10,10")
