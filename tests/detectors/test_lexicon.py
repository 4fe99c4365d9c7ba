"""The shipped name lexicons and imaging vocabulary: their content and the loader's contract."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from agent.detectors import lexicon

DATA_FILES = ("surnames.txt", "given_names.txt", "ambiguous_names.txt", "imaging_vocabulary.txt")

# Words that are both in the imaging vocabulary and distinctive (non-ambiguous) names of the
# lexicon, each with the reason it is an imaging term. The detector never calls a vocabulary word
# a name, so a word here can no longer be found as a person's name: add one only for a genuine
# imaging term. scripts/generate_lexicons.py holds the same list (NAME_COLLISIONS_KEPT).
VOCABULARY_NAME_ALLOWED = {
    "ABD": "abdomen",
    "ABDO": "abdomen",
    "ACHILLES": "anatomy (Achilles tendon)",
    "AKI": "acute kidney injury (US RENAL AKI)",
    "ALA": "Latin anatomy (ala of sacrum)",
    "ANTERO": "combining form (antero-posterior)",
    "AREOLA": "breast anatomy",
    "AV": "atrioventricular, arteriovenous",
    "BI": "bi- (BI-RADS)",
    "BIL": "bilateral",
    "BOLUS": "contrast bolus",
    "CARDIA": "anatomy (gastric cardia)",
    "CARINA": "anatomy (tracheal carina)",
    "CAVA": "Latin anatomy (vena cava)",
    "CEUS": "contrast-enhanced ultrasound",
    "CINE": "cine imaging",
    "CLEOPATRA": "Cleopatra view (mammography)",
    "CO": "cardiac output, CO2",
    "COMP": "complete (XR C Spine Comp)",
    "CONCHA": "Latin anatomy (nasal concha)",
    "COR": "coronal (plane)",
    "CORDIS": "Latin anatomy (ictus cordis)",
    "CORO": "coronal",
    "CORR": "corrected",
    "CORS": "coronals",
    "CRAN": "cranial (angulation)",
    "CRUS": "Latin anatomy (crus of diaphragm)",
    "DAT": "dopamine transporter (DaTscan)",
    "DE": "dual energy",
    "DESS": "MR sequence (double echo steady state)",
    "DI": "deviation index",
    "DIXON": "Dixon fat-water MR technique",
    "DOPPLER": "Doppler ultrasound",
    "DORSI": "Latin anatomy (latissimus dorsi)",
    "DURA": "Latin anatomy (dura mater)",
    "EI": "exposure index",
    "EN": "en face (OCT)",
    "ENDO": "combining form (endo-vaginal)",
    "FLEISCHNER": "Fleischner (lung nodule follow-up)",
    "FOSSA": "Latin anatomy (posterior fossa)",
    "FU": "follow-up",
    "GA": "gestational age; gallium (Ga-68)",
    "GLOBUS": "Latin anatomy (globus pallidus)",
    "HARDI": "high angular resolution diffusion imaging",
    "HIDA": "hepatobiliary scintigraphy",
    "HLA": "horizontal long axis",
    "HU": "Hounsfield units",
    "IAMS": "internal auditory meati",
    "KO": "key object (selection)",
    "KUB": "kidneys, ureters, bladder",
    "LABRUM": "anatomy (glenoid/acetabular labrum)",
    "LOC": "localiser",
    "MAA": "macroaggregated albumin (lung perfusion)",
    "MAC": "measured attenuation correction (PET)",
    "MAG": "magnification; MAG3",
    "MAGNA": "Latin anatomy (cisterna magna)",
    "MAMMO": "mammography",
    "MATER": "Latin anatomy (dura/pia mater)",
    "METS": "metastases",
    "MINS": "minutes",
    "MLO": "mediolateral oblique",
    "MOLLI": "MR T1 mapping sequence",
    "MUGA": "multigated acquisition (cardiac NM)",
    "NA": "not applicable",
    "NASI": "Latin anatomy (dorsum nasi)",
    "NIGRA": "Latin anatomy (substantia nigra)",
    "OM": "occipitomental (view)",
    "OPP": "opposed phase (Dixon)",
    "OS": "Latin anatomy (os calcis); oculus sinister",
    "PALMAR": "anatomical direction",
    "PARA": "combining form (para-aortic)",
    "PE": "pulmonary embolism",
    "PERI": "combining form (peri-anal)",
    "PETROUS": "anatomy (petrous temporal bone)",
    "PIA": "Latin anatomy (pia mater)",
    "PINNA": "ear anatomy",
    "PO": "per os (oral contrast)",
    "PORTA": "Latin anatomy (porta hepatis)",
    "RAMUS": "anatomy (mandibular ramus, ramus intermedius)",
    "RES": "resolution (HIGH RES)",
    "ROI": "region of interest",
    "ROIS": "regions of interest",
    "SA": "short axis",
    "SACRO": "combining form (sacro-iliac)",
    "SAH": "subarachnoid haemorrhage (CT HEAD ?SAH)",
    "SAR": "specific absorption rate (MR)",
    "SE": "spin echo",
    "SELLA": "Latin anatomy (sella turcica)",
    "SI": "sacroiliac",
    "SINO": "combining form (sino-atrial)",
    "SONO": "sonography",
    "STERNAL": "anatomy",
    "STOMA": "stoma (loopogram via stoma)",
    "SUPP": "suppression (FAT SUPP)",
    "TA": "transabdominal",
    "TAU": "tau (PET tracer target)",
    "TE": "echo time",
    "TERES": "Latin anatomy (teres major/minor)",
    "TESLA": "field strength unit (3 TESLA)",
    "TOWNE": "Towne view (skull)",
    "TOWNES": "Townes view (skull)",
    "TRA": "transverse (plane)",
    "TSE": "turbo spin echo",
    "UTE": "ultrashort echo time",
    "VAS": "Latin anatomy (vas deferens)",
    "VEL": "velocity (phase contrast)",
    "VEN": "venous",
    "VENA": "Latin anatomy (vena cava)",
    "VEO": "GE iterative reconstruction",
    "WILLIS": "circle of Willis (MRA)",
    "WO": "without (contrast)",
    "XA": "X-ray angiography",
    "ZEFF": "effective atomic number",
}  # fmt: skip


@pytest.mark.parametrize("name", DATA_FILES)
def test_files_are_sorted_upper_case_unique_words(name: str) -> None:
    text = resources.files("agent.detectors").joinpath("data", name).read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines, name
    assert lines == sorted(set(lines)), f"{name} is not sorted and unique"
    for line in lines:
        assert line == line.strip().upper() and line and " " not in line and not line.startswith("#"), line
    assert all(len(line) >= 2 for line in lines), "one letter is an initial, not a word"


def test_distinctive_surnames_are_names_and_not_ambiguous() -> None:
    for word in ("RAMANATHAN", "ADEYEMI", "BROOKES", "KOWALSKI", "OKONKWO", "JONES"):
        assert word in lexicon.surnames(), word
        assert word not in lexicon.ambiguous_names(), word
        assert word not in lexicon.imaging_vocabulary(), word


def test_given_names() -> None:
    for word in ("HELEN", "MARY", "JOHN", "PRIYA", "MOHAMMED"):
        assert word in lexicon.given_names(), word
    assert "HELEN" not in lexicon.ambiguous_names()


def test_english_words_among_names_are_ambiguous() -> None:
    for word in ("WHITE", "YOUNG", "HALL", "LONG", "GREEN", "WARD", "HEAD", "BONE", "MAY", "SMITH"):
        assert word in lexicon.surnames() | lexicon.given_names(), word
        assert word in lexicon.ambiguous_names(), word
    # Only lexicon names can be ambiguous names.
    assert lexicon.ambiguous_names() <= lexicon.surnames() | lexicon.given_names()


def test_imaging_vocabulary() -> None:
    vocabulary = lexicon.imaging_vocabulary()
    for word in ("CHEST", "LUNG", "AXIAL", "CONTRAST", "T1", "T2", "FLAIR", "CT", "MR", "CORONAL", "LEFT"):
        assert word in vocabulary, word
    # Words that introduce a person are never vocabulary.
    for word in ("BY", "DR", "MRS", "MS"):
        assert word not in vocabulary, word


def test_vocabulary_holds_no_distinctive_name_unless_allowed() -> None:
    strong = (lexicon.surnames() | lexicon.given_names()) - lexicon.ambiguous_names()
    both = lexicon.imaging_vocabulary() & strong
    assert both - VOCABULARY_NAME_ALLOWED.keys() == set(), "distinctive names in the vocabulary"
    # And the allow-list stays honest: each entry is still a vocabulary word and a distinctive name.
    assert VOCABULARY_NAME_ALLOWED.keys() - both == set(), "stale allow-list entries"
    assert all(reason.strip() for reason in VOCABULARY_NAME_ALLOWED.values())


def test_loaders_are_cached_frozensets() -> None:
    for loader in (lexicon.surnames, lexicon.given_names, lexicon.ambiguous_names, lexicon.imaging_vocabulary):
        words = loader()
        assert isinstance(words, frozenset) and words
        assert loader() is words


def test_load_words_skips_comments_and_blanks_and_upper_cases(tmp_path: Path) -> None:
    path = tmp_path / "site-vocabulary.txt"
    path.write_text("# local words\n\nsmartscore\n  Qscan  # the CT kernel we use\nSMART SCORE\n", encoding="utf-8")
    assert lexicon.load_words(path) == frozenset({"SMARTSCORE", "QSCAN", "SMART", "SCORE"})


def test_load_words_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert lexicon.load_words(path) == frozenset()
