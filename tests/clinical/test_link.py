"""A patient's rows link to their images: the same pseudonym, dates moved by the same offset.

The images go through the real engine (`InstanceProcessor`, nccid profile, release gate); the CSV
through `pseudonymise_table` with a Pseudonymiser built separately from the same key and profile
settings, as the daemon builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from pydicom.dataset import Dataset

from agent.clinical import ClinicalSchema
from agent.deidentify.pseudonym import Pseudonymiser
from agent.process import Outcome
from tests.clinical.conftest import rows, schema_from, table
from tests.conftest import output_of
from tests.synthetic import Patient, make_study

PATIENT = Patient(patient_id="HOSP123456")
SCHEMA = """
patient_id: {column: hospital_number, issuer: RXX01}
columns:
  scan_date: {type: date, formats: ["%d/%m/%Y"]}
  scan_time: {type: datetime, formats: ["%d/%m/%Y %H:%M"]}
"""


def deidentified(run: Callable[..., Outcome], study_date: str, study_time: str) -> Dataset:
    return output_of(run(make_study(PATIENT, n_series=1, n_per_series=1, study_date=study_date,
                                    study_time=study_time)[0]))


def study_day(ds: Dataset) -> date:
    return datetime.strptime(str(ds.StudyDate), "%Y%m%d").date()


def test_csv_pseudonym_is_the_dicom_patient_id(run: Callable[..., Outcome], pseudonyms: Pseudonymiser) -> None:
    """The CSV's patient_pseudonym is exactly the Patient ID the engine wrote for that patient."""
    image = deidentified(run, "20200315", "120000")
    result = table("hospital_number,scan_date,scan_time\nHOSP123456,15/03/2020,\n", schema_from(SCHEMA), pseudonyms)
    assert rows(result)[0]["patient_pseudonym"] == str(image.PatientID)
    assert str(image.PatientID) != PATIENT.patient_id


def test_dates_move_like_the_images_and_keep_intervals(run: Callable[..., Outcome], pseudonyms: Pseudonymiser) -> None:
    """A date alone moves as the engine moves a date at noon; the gap between two studies survives.

    Scans at noon on 15 March and 2 April 2020: the CSV's dates are the shifted StudyDates, and
    their interval (18 days) is the images' interval.
    """
    schema: ClinicalSchema = schema_from(SCHEMA)
    first, second = deidentified(run, "20200315", "120000"), deidentified(run, "20200402", "120000")
    result = table("hospital_number,scan_date,scan_time\nHOSP123456,15/03/2020,\nHOSP123456,02/04/2020,\n",
                   schema, pseudonyms)
    csv_first, csv_second = (date.fromisoformat(row["scan_date"]) for row in rows(result))
    assert (csv_first, csv_second) == (study_day(first), study_day(second))
    assert csv_second - csv_first == study_day(second) - study_day(first)
    assert csv_first != date(2020, 3, 15)


def test_date_and_time_move_as_one_instant_like_study_date_and_time(
    run: Callable[..., Outcome], pseudonyms: Pseudonymiser
) -> None:
    """A late-evening datetime lands where the engine puts StudyDate with StudyTime, midnight crossed or not."""
    image = deidentified(run, "20200315", "233000")
    result = table("hospital_number,scan_date,scan_time\nHOSP123456,,15/03/2020 23:30\n", schema_from(SCHEMA),
                   pseudonyms)
    shifted = datetime.fromisoformat(rows(result)[0]["scan_time"])
    assert shifted == datetime.strptime(f"{image.StudyDate}{image.StudyTime}", "%Y%m%d%H%M%S")
