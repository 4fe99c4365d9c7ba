"""`nmip-agent check --preview DIR`: PNGs of masked or flagged frames, boxes drawn, and one HTML
page tying them to the attribute table, that opens from disk with no network."""

from __future__ import annotations

import html
import re
import stat
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.deidentify import load_profile
from agent.deidentify.burnedin import PixelReport, decide
from agent.preview import GATE, OCR, REGION, PreviewEntry, render_frames, write_preview
from agent.quarantine import Reason, Refusal
from tests.cli.helpers import Run, deid_sample, nmip, sample

PATIENT_NAME = "(0010,0010)"
PNG_NAME = re.compile(r"^[0-9a-f]{32}-f\d+\.png$")


class _Links(HTMLParser):
    """Every src and href of a page, and the images of each file's section (by its h2 text)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: dict[str, list[str]] = {}
        self._section: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "data")]
        if tag == "h2":
            self._in_h2, self._section = True, ""
        elif tag == "img" and self._section is not None:
            label = re.sub(r"^\d+\.\s*", "", self._section)  # "2. /path/file.dcm"
            self.images.setdefault(label, []).append(values.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2 and self._section is not None:
            self._section += data


@pytest.fixture(scope="module")
def inputs() -> dict[str, Path]:
    """GE LOGIQ ultrasound (OCR masks the institution) and a Siemens one (region rules)."""
    return {"US1_UNCR.dcm": sample("US1_UNCR.dcm"), "RGB_IMAGE.dcm": deid_sample("ultrasounds/RGB_IMAGE.dcm")}


@pytest.fixture(scope="module")
def run(inputs: dict[str, Path], key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """check --profile nmip --json --preview DIR over both files, once; DIR does not exist yet."""
    cwd = tmp_path_factory.mktemp("cwd")
    folder = cwd / "preview" / "out"
    result = nmip("check", *inputs.values(), "--profile", "nmip", "--key-file", key_file, "--json",
                  "--preview", folder, cwd=cwd)
    assert result.returncode == 0, result.output
    return result, folder


@pytest.fixture(scope="module")
def page(run: tuple[Run, Path]) -> str:
    return (run[1] / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def links(page: str) -> _Links:
    parser = _Links()
    parser.feed(page)
    return parser


def _section(page: str, path: Path) -> str:
    """The part of the page about one input file."""
    chunks = [c for c in page.split("<section")[1:] if f"{html.escape(str(path))}</h2>" in c]
    assert len(chunks) == 1, path
    return chunks[0]


def test_page_and_pngs_are_written_privately_and_named(run: tuple[Run, Path]) -> None:
    result, folder = run
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert result.json()["preview"] == str(folder / "index.html")
    assert f"preview: {folder / 'index.html'}" in result.stderr  # stdout stays one JSON document
    for item in folder.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) == 0o600, item
        assert item.name == "index.html" or PNG_NAME.match(item.name), item.name


def test_each_file_has_its_frames_referenced_and_readable(run: tuple[Run, Path], inputs: dict[str, Path],
                                                         links: _Links) -> None:
    folder = run[1]
    referenced = set()
    for path in inputs.values():
        source = dcmread(path, stop_before_pixels=True)
        images = links.images.get(str(path), [])
        assert images, f"no frame drawn for {path.name}"
        for name in images:
            assert "/" not in name and PNG_NAME.match(name), name
            with Image.open(folder / name) as image:
                assert image.format == "PNG"
                assert image.size == (source.Columns, source.Rows)
        referenced.update(images)
    assert referenced == {p.name for p in folder.glob("*.png")}, "every PNG on the page and no other"


def test_file_names_hold_no_input_name_or_identifier(run: tuple[Run, Path], inputs: dict[str, Path]) -> None:
    names = [p.name.upper() for p in run[1].iterdir()]
    for path in inputs.values():
        source = dcmread(path, stop_before_pixels=True)
        forbidden = {path.stem.upper(), path.name.upper(), str(source.get("PatientID", "")).upper(),
                     str(source.get("PatientName", "")).upper()} - {""}
        for name in names:
            assert not any(value in name for value in forbidden), name


def test_page_is_network_free(page: str, links: _Links) -> None:
    assert "http://" not in page and "https://" not in page
    for url in links.urls:
        assert "//" not in url and ":" not in url, url  # own images by name, in-page anchors only
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page


def test_attribute_table_shows_before_and_after(page: str, inputs: dict[str, Path], run: tuple[Run, Path]) -> None:
    reports = {r["file"]: r for r in run[0].json()["files"]}
    for path in inputs.values():
        row = next(r for r in reports[str(path)]["attributes"] if r["attribute"] == PATIENT_NAME)
        source = str(dcmread(path, stop_before_pixels=True).PatientName)
        assert row["before"] == source and row["after"] != source
        after = "(removed)" if row["after"] is None else html.escape(row["after"])
        assert re.search(rf"<td[^>]*>{re.escape(PATIENT_NAME)}</td><td>PatientName</td><td>[^<]*</td>"
                         rf"<td[^>]*>{re.escape(html.escape(source))}</td><td[^>]*>{re.escape(after)}</td>",
                         _section(page, path)), path.name


def test_rule_rectangles_are_outlined(inputs: dict[str, Path], links: _Links, run: tuple[Run, Path],
                                      page: str) -> None:
    path = inputs["RGB_IMAGE.dcm"]
    regions = decide(dcmread(path), load_profile("nmip")).regions
    assert regions is not None and regions.boxes
    section = _section(page, path)
    assert "Clean Ultrasound Regions" in section  # the rule's label is on the page
    name = links.images[str(path)][0]
    with Image.open(run[1] / name) as image:
        rgb = image.convert("RGB")
        for x0, y0, x1, y1 in regions.boxes:
            middle_x, middle_y = (x0 + x1) // 2, (y0 + y1) // 2
            for point in ((middle_x, y0), (middle_x, y1 - 1), (x0, middle_y), (x1 - 1, middle_y)):
                assert rgb.getpixel(point) == REGION[0], (point, (x0, y0, x1, y1))
        x0, y0, x1, y1 = regions.boxes[0]
        assert sum(rgb.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))) < 30  # inside: masked, dark


def test_ocr_hits_are_drawn_and_counted(inputs: dict[str, Path], links: _Links, run: tuple[Run, Path],
                                        page: str) -> None:
    """US1_UNCR's institution name is burned in at the top: OCR masks it and it is drawn in
    the OCR colour, tagged with its kind; the text read is never on the page."""
    path = inputs["US1_UNCR.dcm"]
    section = _section(page, path)
    assert "identifying word(s) masked (institution)" in section
    assert "BAPTIST" not in page.split("<table")[0]  # the words read: only the attribute table has values
    name = links.images[str(path)][0]
    with Image.open(run[1] / name) as image:
        top = image.convert("RGB").crop((0, 0, image.width, 60))
        colours = top.getcolors(maxcolors=1 << 16) or []
        assert dict((c, n) for n, c in colours).get(OCR[0], 0) > 50, "OCR boxes drawn at the top"
        assert GATE[0] not in {c for _, c in colours}, "the gate read nothing: no red"


def test_without_json_the_page_is_printed_last(inputs: dict[str, Path], key_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "look"
    result = nmip("check", inputs["RGB_IMAGE.dcm"], "--profile", "nmip", "--key-file", key_file,
                  "--changed-only", "--preview", folder, cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"preview: {folder / 'index.html'}")
    assert '<tr class="same">' not in (folder / "index.html").read_text()  # --changed-only: kept ones hidden


def test_a_preview_path_that_is_a_file_is_refused(inputs: dict[str, Path], key_file: Path, tmp_path: Path) -> None:
    taken = tmp_path / "report.txt"
    taken.write_text("not a folder\n")
    result = nmip("check", inputs["RGB_IMAGE.dcm"], "--profile", "nmip", "--key-file", key_file,
                  "--preview", taken, cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert "must be a folder" in result.stderr and "PASS" not in result.stdout
    assert taken.read_text() == "not a folder\n"


def test_a_frame_that_cannot_be_decoded_is_said_not_drawn(tmp_path: Path) -> None:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = b"\0" * 10  # shorter than its image
    pixels = PixelReport(risk=Refusal(Reason.BURNED_IN_RISK, "modality US"), masked=True, region_boxes=[(0, 0, 8, 2)])
    frames = render_frames(tmp_path, "0" * 32, ds, pixels)
    assert [f.file_name for f in frames] == [None] and "cannot be shown" in frames[0].caption
    entry = PreviewEntry(label="a <b>.dcm", verdict="quarantine", reason="x", detail="<script>", pixels=pixels,
                         frames=frames)
    text = write_preview(tmp_path, [entry]).read_text()
    assert "cannot be shown" in text and "<script>" not in text and "a &lt;b&gt;.dcm" in text
    assert not list(tmp_path.glob("*.png"))
