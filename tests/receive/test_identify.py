"""The receiver's check that a C-STORE dataset is whole, and which study it belongs to.

`_scan` reads only tags and lengths; whenever it is unsure, pydicom decides. The property that
matters: the fast path never accepts a stream the pydicom path refuses (a truncated instance
answered with success would be lost to the sender's retry), and both name the same UIDs.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
import pydicom
from pydicom.filewriter import dcmwrite

from agent import receive
from tests.synthetic import Patient, make_study


def as_received(ds: object) -> bytes:
    """What pynetdicom's `Event.encoded_dataset(include_meta=True)` hands over: a Part 10 stream."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def pydicom_path(data: bytes) -> tuple[str, str, str] | None:
    """The receiver's verdict with the scanner switched off."""
    original = receive._scan
    receive._scan = lambda data: (_ for _ in ()).throw(receive._Unsure())  # type: ignore[assignment]
    try:
        return receive._identify(data)
    except Exception:
        return None
    finally:
        receive._scan = original


def verdict(data: bytes) -> tuple[str, str, str] | None:
    try:
        return receive._identify(data)
    except Exception:
        return None


def corpus() -> list[bytes]:
    streams = []
    # pydicom's own test files, from the package (get_testdata_files would try to download more).
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm")):
        try:
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SOPInstanceUID  # noqa: B018 - both present, or skip
            streams.append(as_received(ds))
        except Exception:
            continue
    streams += [as_received(ds) for ds in make_study(Patient(), n_series=1, n_per_series=2)]
    return streams


CORPUS = corpus()


def test_the_corpus_covers_the_usual_encodings() -> None:
    assert len(CORPUS) > 40
    assert sum(1 for data in CORPUS if _scanned(data)) > 20  # the fast path does serve


def _scanned(data: bytes) -> bool:
    try:
        receive._scan(data)
        return True
    except (receive._Unsure, UnicodeDecodeError, struct.error):
        return False


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_fast_path_agrees_with_pydicom(index: int) -> None:
    data = CORPUS[index]
    assert verdict(data) == pydicom_path(data)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_fast_path_never_accepts_a_truncated_stream_pydicom_refuses(index: int) -> None:
    data = CORPUS[index]
    for cut in sorted({len(data) - 1, len(data) - 2, len(data) - 200, len(data) * 3 // 4, len(data) // 2, 400, 140}):
        if 0 < cut < len(data):
            truncated = data[:cut]
            if pydicom_path(truncated) is None:
                assert verdict(truncated) is None, f"cut at {cut} of {len(data)} accepted"


def test_scanner_refuses_a_stream_cut_inside_its_pixel_data(tmp_path: Path) -> None:
    data = as_received(make_study(Patient(), n_series=1, n_per_series=1, rows=256, columns=256)[0])
    assert verdict(data) is not None
    with pytest.raises(receive._Unsure):
        receive._scan(data[:-1000])
    assert verdict(data[:-1000]) is None
