"""The dry run's preview: PNGs of the output's frames with what was masked drawn on them, and one
HTML page tying them to the attribute table, so an IG officer can look rather than read.

The page holds source values (the attribute table's "before" column) and stays on site, like the
dry run's own output. It opens from disk with no network: inline CSS, no script, no font or URL,
images by relative file name, and a Content-Security-Policy that forbids fetching anything else.
PNG names are keyed opaque names (`<opaque>-f<frame>.png`): never an input file's name or a value.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from agent.deidentify import masking
from agent.deidentify.burnedin import PixelReport
from agent.deidentify.regions import Rect
from agent.errors import UsageError

MAX_FRAMES = 16  # per instance: frame 0, then the frames OCR and the gate read
PAGE = "index.html"

# (colour, what it means): the PNGs and the page's legend use the same names.
REGION = ((0, 255, 255), "region rule: a rectangle the profile masks in every frame")
OCR = ((255, 215, 0), "OCR: an identifying word read in the source, masked in every frame")
GATE = ((255, 40, 40), "release gate: an identifying word still readable in the output (refused)")


@dataclass(frozen=True)
class AttributeRow:
    """One attribute of the dry run's table: what it was and what would leave."""

    path: str
    keyword: str
    action: str
    before: str
    after: str | None  # None: removed


@dataclass(frozen=True)
class PreviewFrame:
    """One drawn frame: its PNG's name in the preview folder, or why it could not be drawn."""

    index: int
    file_name: str | None
    caption: str
    width: int = 0
    height: int = 0


@dataclass
class PreviewEntry:
    """One input file on the page. `label` is the path as given (the page stays on site), never
    used in a file name; `frames` are already written by `render_frames`."""

    label: str
    verdict: str
    reason: str = ""
    detail: str = ""
    output: str = ""
    attributes: list[AttributeRow] = field(default_factory=list)
    pixels: PixelReport | None = None
    frames: list[PreviewFrame] = field(default_factory=list)


def prepare_folder(folder: Path) -> None:
    """Create the preview folder (0700: it will hold source values) before the slow dry run, or
    refuse a path that is not a folder."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: --preview must be a folder, and this is not one")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the preview folder ({exc.strerror})") from None


def wants_frames(pixels: PixelReport | None) -> bool:
    """Only images whose pixels were masked, read, or judged at risk are worth a look."""
    return pixels is not None and bool(pixels.masked or pixels.ocr_hits or pixels.gate_hits
                                       or pixels.risk is not None)


def frames_to_draw(pixels: PixelReport, count: int) -> list[int]:
    """Frame 0 and every frame OCR or the gate read, at most MAX_FRAMES, within the image."""
    wanted = sorted({0, *pixels.ocr_frames, *pixels.gate_frames})
    return [f for f in wanted if 0 <= f < max(count, 1)][:MAX_FRAMES]


def render_frames(folder: Path, name: str, dataset: Dataset, pixels: PixelReport,
                  taken: set[str] | None = None) -> list[PreviewFrame]:
    """Write the output's frames, boxes drawn, as `<name>-f<frame>.png` in `folder`. `taken` holds
    names already written this run (the same instance given twice gets a suffix, not overwritten).
    A frame that cannot be decoded is a caption saying so, not a crash."""
    taken = set() if taken is None else taken
    stem = name
    number = 2
    while any(t.startswith(f"{stem}-f") for t in taken):
        stem, number = f"{name}-{number}", number + 1
    try:
        native = masking.native_copy(dataset)
        indices = frames_to_draw(pixels, masking.frame_count(native))
    except Exception as exc:  # the page says so: a picture must not stop the dry run
        return [PreviewFrame(0, None, f"the output's pixels cannot be shown here: {_why(exc)}")]
    drawn = []
    for index in indices:
        try:
            image = Image.fromarray(np.ascontiguousarray(masking.rgb_frame(native, index)), "RGB")
        except Exception as exc:  # pydicom's and numpy's errors, whatever the image
            drawn.append(PreviewFrame(index, None, f"frame {index}: cannot be shown here: {_why(exc)}"))
            continue
        _draw(image, index, pixels)
        file_name = f"{stem}-f{index}.png"
        with _private(folder / file_name, "wb") as stream:
            image.save(stream, format="PNG")
        taken.add(file_name)
        drawn.append(PreviewFrame(index, file_name, _caption(index, pixels), image.width, image.height))
    return drawn


def _why(exc: Exception) -> str:
    """masking's messages name no value; anyone else's might, so only their type is shown."""
    return str(exc) if isinstance(exc, masking.PixelsUndecodable) else type(exc).__name__


def _draw(image: Image.Image, frame: int, pixels: PixelReport) -> None:
    """Rule rectangles, then OCR's masked words (all frames: each was masked in every frame), then
    the gate's hits in this frame, each hit labelled with its kind, never with the text read."""
    draw = ImageDraw.Draw(image)
    width = max(2, min(image.size) // 250)
    font = ImageFont.load_default(size=max(11, min(image.size) // 45))
    labels: list[tuple[str, Rect]] = []
    for box in pixels.region_boxes:
        _box(draw, box, REGION[0], width)
    for colour, hits in ((OCR[0], _unique((h.box, h.label) for h in pixels.ocr_hits)),
                         (GATE[0], _unique((h.box, h.label) for h in pixels.gate_hits if h.frame == frame))):
        for box, label in hits:
            _box(draw, box, colour, width)
            _label(draw, box, label, colour, font, image.size, labels)


def _unique(hits: Iterable[tuple[Rect, str]]) -> list[tuple[Rect, str]]:
    return list(dict.fromkeys(hits))


def _box(draw: ImageDraw.ImageDraw, box: Rect, colour: tuple[int, int, int], width: int) -> None:
    x0, y0, x1, y1 = box  # x1, y1 exclusive; Pillow's are inclusive, and it draws the width inwards
    if x1 > x0 and y1 > y0:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=min(width, (x1 - x0 + 1) // 2,
                                                                             (y1 - y0 + 1) // 2))


def _label(draw: ImageDraw.ImageDraw, box: Rect, text: str, colour: tuple[int, int, int],
           font: ImageFont.FreeTypeFont | ImageFont.ImageFont, size: tuple[int, int],
           placed: list[tuple[str, Rect]]) -> None:
    """A small tag above the box (below it at the top edge); one tag for a row of neighbouring
    words of the same kind."""
    left, top, right, bottom = (int(v) for v in draw.textbbox((0, 0), text, font=font))
    w, h = right - left + 4, bottom - top + 4
    x = min(max(box[0], 0), max(size[0] - w, 0))
    y = box[1] - h - 1 if box[1] - h - 1 >= 0 else min(box[3] + 1, max(size[1] - h, 0))
    tag = (x, y, x + w, y + h)
    for other, rect in placed:
        if other == text and tag[0] < rect[2] + w and rect[0] < tag[2] + w and tag[1] < rect[3] and rect[1] < tag[3]:
            return
    placed.append((text, tag))
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=(0, 0, 0), outline=colour)
    draw.text((x + 2 - left, y + 2 - top), text, fill=colour, font=font)


def _caption(frame: int, pixels: PixelReport) -> str:
    parts = [f"frame {frame}"]
    if pixels.region_boxes:
        parts.append(f"{len(pixels.region_boxes)} rule rectangle(s) masked")
    masked = _unique((h.box, h.label) for h in pixels.ocr_hits)
    if masked:
        parts.append(f"{len(masked)} OCR word(s) masked ({', '.join(sorted({label for _, label in masked}))})")
    if frame in pixels.ocr_frames:
        parts.append("read by OCR")
    if frame in pixels.gate_frames:
        still = sorted({h.label for h in pixels.gate_hits if h.frame == frame})
        parts.append(f"gate still reads: {', '.join(still)}" if still else "gate read it: nothing identifying")
    return "; ".join(parts)


def _private(path: Path, mode: str) -> IO[Any]:
    """Open a file only its owner can read, whatever the umask (the page holds source values)."""

    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags, 0o600)
        os.fchmod(fd, 0o600)  # an earlier run's file keeps its mode otherwise
        return fd

    return open(path, mode, opener=opener)  # the caller closes it


# -- the page ----------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 2em 0 .4em; padding-top: .6em; border-top: 2px solid #ccc;
     overflow-wrap: anywhere; }
.onsite { background: #fff4e5; border: 1px solid #e0a040; padding: .6em .9em; border-radius: 4px; }
.meta { color: #555; }
.verdict { display: inline-block; font-weight: bold; padding: .1em .6em; border-radius: 3px; color: #fff; }
.pass { background: #2e7d32; } .quarantine { background: #c62828; } .excluded { background: #607d8b; }
.skipped, .unreadable { background: #b26a00; }
dl.pixels { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: .6em 0; }
dl.pixels dt { font-weight: bold; } dl.pixels dd { margin: 0; overflow-wrap: anywhere; }
figure { display: inline-block; vertical-align: top; margin: .5em 1em .8em 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #888; background: #000; }
figcaption { font-size: .9em; color: #333; max-width: 640px; }
.noimage { padding: .6em .9em; border: 1px dashed #b26a00; background: #fff8e1; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .5em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr.same td { color: #777; }
td.removed { color: #777; font-style: italic; }
td.mono, td.before, td.after { font-family: ui-monospace, Menlo, Consolas, monospace; }
.legend span.swatch { display: inline-block; width: 1.6em; height: .9em; border: 3px solid; margin-right: .5em;
                      vertical-align: middle; background: #000; }
.legend li { list-style: none; margin: .2em 0; } .legend ul { padding-left: 0; }
nav ol { columns: 2; } nav a { overflow-wrap: anywhere; }
"""

# Nothing may be fetched: only the page's own style and images beside it, whatever a value holds.
_POLICY = "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; form-action 'none'"


def write_preview(folder: Path, entries: Sequence[PreviewEntry], *, profile: str = "",
                  key_id: str = "") -> Path:
    """Write `index.html` in `folder` (its PNGs are already there: `render_frames`); its path."""
    e = html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{e(_POLICY)}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>nmip-agent check: preview</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n",
        "<h1>nmip-agent check: what would leave, and what was masked</h1>\n",
        f"<p class=\"meta\">{len(entries)} file(s)" + (f"; profile <b>{e(profile)}</b>" if profile else "")
        + (f"; key id {e(key_id)}" if key_id else "") + f"; made {e(when)}</p>\n",
        "<p class=\"onsite\"><b>Keep on site.</b> This page shows the source's values (the "
        "<i>Before</i> column) and the input files' names: it holds identifiers, as the dry run does.</p>\n",
        _legend(),
        _summary(entries),
    ]
    parts.extend(_section(number, entry) for number, entry in enumerate(entries, 1))
    parts.append("</body>\n</html>\n")
    page = folder / PAGE
    with _private(page, "wb") as stream:
        stream.write("".join(parts).encode("utf-8", errors="replace"))  # a lone surrogate is not UTF-8
    return page


def _legend() -> str:
    items = "".join(
        f"<li><span class=\"swatch\" style=\"border-color: rgb{colour}\"></span>{html.escape(meaning)}</li>"
        for colour, meaning in (REGION, OCR, GATE))
    return ("<div class=\"legend\"><b>In the images</b> (each is the frame as it would leave, after masking;"
            f" a tag names the kind of word, never the word):<ul>{items}</ul></div>\n")


def _summary(entries: Sequence[PreviewEntry]) -> str:
    rows = "".join(
        f"<li><a href=\"#file-{n}\">{html.escape(entry.label)}</a> "
        f"<span class=\"verdict {_css_class(entry.verdict)}\">{html.escape(entry.verdict.upper())}</span></li>"
        for n, entry in enumerate(entries, 1))
    return f"<nav><ol>{rows}</ol></nav>\n"


def _css_class(verdict: str) -> str:
    return verdict if verdict in ("pass", "quarantine", "excluded", "skipped", "unreadable") else "skipped"


def _section(number: int, entry: PreviewEntry) -> str:
    e = html.escape
    out = [f"<section id=\"file-{number}\">\n<h2>{number}. {e(entry.label)}</h2>\n<p>"
           f"<span class=\"verdict {_css_class(entry.verdict)}\">{e(entry.verdict.upper())}</span> "]
    if entry.reason:
        out.append(f"<b>{e(entry.reason)}</b>: ")
    if entry.detail:
        out.append(e(entry.detail))
    if entry.output:
        out.append(f"would be released as <code>{e(entry.output)}</code>")
    out.append("</p>\n")
    if entry.pixels is not None:
        out.append(_pixels(entry.pixels))
    for frame in entry.frames:
        if frame.file_name is None:
            out.append(f"<p class=\"noimage\">{e(frame.caption)}</p>\n")
        else:
            out.append(f"<figure><img src=\"{e(frame.file_name)}\" alt=\"{e(frame.caption)}\" "
                       f"width=\"{frame.width}\" height=\"{frame.height}\" loading=\"lazy\">"
                       f"<figcaption>{e(frame.caption)}</figcaption></figure>\n")
    if entry.attributes:
        out.append(_table(entry.attributes))
    elif entry.verdict in ("pass", "quarantine"):
        out.append("<p class=\"meta\">No attribute to show.</p>\n")
    out.append("</section>\n")
    return "".join(out)


def _pixels(pixels: PixelReport) -> str:
    e = html.escape
    masked = _unique((h.box, h.label) for h in pixels.ocr_hits)
    rows = [("At risk of burned-in text", e(pixels.risk.detail) if pixels.risk else "no"),
            ("Region rules matched", "<br>".join(e(r) for r in pixels.rules) or "none"),
            ("Rule rectangles masked", str(len(pixels.region_boxes)))]
    if pixels.ocr_frames:
        rows.append(("OCR", f"read {pixels.ocr_words} word(s) in frame(s) {_frames(pixels.ocr_frames)}; "
                            f"{len(masked)} identifying word(s) masked"
                            + (f" ({e(', '.join(sorted({label for _, label in masked})))})" if masked else "")))
    if pixels.gate_frames:
        still = sorted({h.label for h in pixels.gate_hits})
        rows.append(("Release gate", f"read frame(s) {_frames(pixels.gate_frames)} of the output: "
                     + (f"<b>still reads {e(', '.join(still))}</b>" if still else "nothing identifying")))
    written = e(pixels.written_as or "uncompressed")
    coded = f" (decoded from {e(pixels.reencoded)}, written {written})" if pixels.reencoded else ""
    rows.append(("Pixels", ("masked" if pixels.masked else "not masked") + coded))
    if pixels.note:
        rows.append(("Note", e(pixels.note)))
    body = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f"<dl class=\"pixels\">{body}</dl>\n"


def _frames(frames: Sequence[int]) -> str:
    shown = ", ".join(str(f) for f in frames[:12])
    return shown + (f" and {len(frames) - 12} more" if len(frames) > 12 else "")


def _table(rows: Sequence[AttributeRow]) -> str:
    e = html.escape
    out = ["<table>\n<thead><tr><th>Attribute</th><th>Keyword</th><th>Action</th><th>Before</th>"
           "<th>After</th></tr></thead>\n<tbody>\n"]
    for row in rows:
        same = " class=\"same\"" if row.after == row.before else ""
        after = ("<td class=\"removed\">(removed)</td>" if row.after is None
                 else f"<td class=\"after\">{e(row.after)}</td>")
        out.append(f"<tr{same}><td class=\"mono\">{e(row.path)}</td><td>{e(row.keyword)}</td>"
                   f"<td>{e(row.action)}</td><td class=\"before\">{e(row.before)}</td>{after}</tr>\n")
    out.append("</tbody>\n</table>\n")
    return "".join(out)
