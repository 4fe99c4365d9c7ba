"""Sample studies for scripts/deb-check.sh, written from pydicom's public CT_small.dcm.

Run by the installed package's own interpreter (/opt/nmip-agent/bin/python, which has pydicom):

    python deb-check-samples.py OUT_DIR

writes one folder per study, each a kind the check needs to see the agent handle:

    queued-1/ ... queued-4/  CT, 2 instances each: in the nccid profile's scope, de-identified and queued
    quarantined/       CT, 2 instances, BurnedInAnnotation YES: refused by the release gate, held on site
    excluded/          Secondary Capture: outside the profile's SOP classes, excluded (not sent, not held)

Every value that would identify someone is made up (DEBCHECK^...); new UIDs for every study.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def study(out: Path, name: str, patient: str, *, burned: bool = False, sop_class: str | None = None,
          instances: int = 2) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, instances + 1):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName = f"DEBCHECK^{patient}"
        ds.PatientID = f"DEBCHECK{patient}"
        ds.AccessionNumber = f"ACC{patient}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        if burned:
            ds.BurnedInAnnotation = "YES"
        if sop_class is not None:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
            ds.Modality = "OT"
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)


def main() -> None:
    out = Path(sys.argv[1])
    for index in (1, 2, 3, 4):
        study(out, f"queued-{index}", f"Q{index}")
    study(out, "quarantined", "BURNED", burned=True)
    study(out, "excluded", "SC", sop_class=SECONDARY_CAPTURE, instances=1)


if __name__ == "__main__":
    main()
