"""Run dicom3tools' dciodvfy (IOD validator) and compare its errors across files.

dciodvfy writes everything to stderr (stdout stays empty) and exits 1 when it found an error,
0 otherwise. A run looks like this:

    (0x0019,0x1010)  ?  - Warning - Unrecognized tag - assuming explicit value representation OK
    CTImage
    Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>
    Error - Value invalid for this VR - (0x0008,0x0020) DA Study Date  DA [1] = <2020-03-15> - Character invalid for this VR = '-' (0x2d)
    Error - Unrecognized enumerated value <Q> for value 1 of attribute <Patient's Sex>
    Error - StudyInstanceUID has same value as FrameOfReferenceUID <1.2.3>
    Error - Illegal root for UID - "9.8.7.6" in (0x0008,0x1155) Referenced SOP Instance UID
    Error - PixelData has incorrect value length - expected 30000 dec - got 20000 dec
    Abort - File open for read failed - "nonexist.dcm"

Lines before the IOD's name come from reading the file, lines after from checking the IOD.
Errors name the attribute (Element=<Keyword>, attribute <Name>, or tag + VR + name) and the
kind of problem, and most also echo the offending value. De-identification changes those values
(UIDs, names, dates, lengths), so dciodvfy_errors() blanks them: an error that the input already
had compares equal to the same error on the output, and only errors the de-identifier
introduced remain in `dciodvfy_errors(out) - dciodvfy_errors(in)`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

DCIODVFY = "/usr/bin/dciodvfy"
TIMEOUT_S = 60

# A line reports an error when its kind is Error (or Abort: dciodvfy gave up).
_KIND = re.compile(r"(?:^|\s)(Error|Abort) - ")

_SUBSTITUTIONS: list[tuple[re.Pattern[str], str]] = [
    # "VR [1] = <value>": the value runs to "> - " or to the end of the line (it may itself
    # contain angle brackets, or go on over several lines, e.g. XML in a UT).
    (re.compile(r"(\[\d+\] = )<(?:.*?>(?= - )|.*$)"), r"\1<>"),
    # Values echoed in angle brackets; keep the attribute and module names that also use them.
    (re.compile(r"(?<!Element=)(?<!Module=)(?<!attribute )<[^<>]*>"), "<>"),
    # Quoted UIDs and file names.
    (re.compile(r'"[^"]*"'), '""'),
    # The offending character: = '-' (0x2d), or = '' (0) for a NUL.
    (re.compile(r"= '.*?' \((?:0x[0-9a-fA-F]+|0)\)"), "= ''"),
    # Bare UIDs (e.g. "ReferencedSOPInstanceUID 1.2.3.4", or "... UID 0").
    (re.compile(r"(?<=UID )[\d.]+(?![\w.])"), "<uid>"),
    # ... and dotted numbers anywhere else.
    (re.compile(r"(?<![\w.])\d+(?:\.\d+)+(?![\w.])"), "<uid>"),
    # Hex numbers that are not part of a tag "(0xgggg,0xeeee)", e.g. value lengths.
    (re.compile(r"(?<![(,])\b0x[0-9a-fA-F]+\b(?![,)])"), "0xN"),
    # Decimal numbers (lengths, counts, values), but not "Type 1C", "value 3", "[1]", "<= 16".
    (re.compile(r"(?<![\w.\[])(?<!Type )(?<!value )(?<!<= )(?<!multiple of )\d+(?![\w.\]])"), "N"),
    (re.compile(r"\s+"), " "),
]


def dciodvfy_available() -> bool:
    """True when dciodvfy can be run (Debian package dicom3tools)."""
    return os.access(DCIODVFY, os.X_OK) or shutil.which("dciodvfy") is not None


def _binary() -> str:
    if os.access(DCIODVFY, os.X_OK):
        return DCIODVFY
    found = shutil.which("dciodvfy")
    if found is None:
        raise FileNotFoundError("dciodvfy not found: run scripts/install-debian-packages.sh (Debian package dicom3tools)")
    return found


def dciodvfy_output(path: str | os.PathLike[str]) -> str:
    """dciodvfy's whole report on `path` (for failure messages)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    proc = subprocess.run(
        [_binary(), os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    return proc.stdout + proc.stderr


def normalise(line: str) -> str:
    """An Error/Abort line with the values it echoes blanked, keeping attribute and kind."""
    line = line.strip()
    for pattern, replacement in _SUBSTITUTIONS:
        line = pattern.sub(replacement, line)
    return line.strip()


def dciodvfy_errors(path: str | os.PathLike[str]) -> set[str]:
    """The set of dciodvfy's ERROR (and Abort) lines for `path`, normalised by normalise()."""
    return {normalise(line) for line in dciodvfy_output(path).splitlines() if _KIND.search(line)}
