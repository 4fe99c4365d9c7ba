"""The `nmip-agent` command line. Each command parses, calls the stages, and reports.

Exit codes: 0 success; 1 an instance was (or would be) quarantined, or a file was unreadable
during a batch; 2 a usage error, an unreadable input for `check`, or a bad key or profile.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from agent import __version__
from agent.errors import AgentError, UnreadableInput, UsageError
from agent.keys import KEY_TYPES, init_key_file, load_key_file, make_csr

if TYPE_CHECKING:
    from agent.preview import PreviewEntry

# Tracebacks with local variables would print identifiers: typer's pretty exceptions are off.
# Plain help (rich_markup_mode=None): the rich layout shows `<bool>` beside every flag.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="On-site DICOM de-identification agent.",
    pretty_exceptions_enable=False, pretty_exceptions_show_locals=False, rich_markup_mode=None,
)
keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Create and inspect the site's pseudonymisation key.")
app.add_typer(keys_app, name="keys")

# Piped output (a report saved to a file) gets wide tables instead of 80 columns of folded text.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

KeyFile = Annotated[Path, typer.Option("--key-file", help="The site key (see `nmip-agent keys init`).")]
ProfileName = Annotated[str, typer.Option("--profile", help="A profile name in profiles/, or a manifest .yaml path.")]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"nmip-agent {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """On-site DICOM de-identification agent."""


@keys_app.command("init")
def keys_init(key_file: KeyFile) -> None:
    """Write a new 256-bit key (mode 0600). Refuses to overwrite an existing file."""
    key = init_key_file(key_file)
    out.print(f"wrote {key_file} (key id {key.key_id}); keep it secret and back it up: "
              "without it, pseudonyms cannot be reproduced")


@keys_app.command("id")
def keys_id(key_file: KeyFile) -> None:
    """Print the key id (the non-secret fingerprint recorded in every output)."""
    out.print(load_key_file(key_file).key_id)


@keys_app.command("csr")
def keys_csr(
    key_out: Annotated[Path, typer.Option("--key-out", help="Where to write the new TLS private key (mode 0600).")],
    csr_out: Annotated[Path, typer.Option("--csr-out", help="Where to write the certificate signing request (PEM).")],
    common_name: Annotated[Optional[str], typer.Option("--common-name", help="Subject CN; default: this host's fully qualified name.")] = None,
    organisation: Annotated[Optional[str], typer.Option("--organisation", help="Subject O, e.g. the hospital trust.")] = None,
    organisational_unit: Annotated[Optional[str], typer.Option("--organisational-unit", help="Subject OU.")] = None,
    country: Annotated[Optional[str], typer.Option("--country", help="Subject C, a two-letter code such as GB.")] = None,
    key_type: Annotated[str, typer.Option("--key-type", help=f"One of {', '.join(KEY_TYPES)}.")] = KEY_TYPES[0],
) -> None:
    """Make the site's TLS client key and a CSR for the platform's CA. Refuses to overwrite either file."""
    import socket

    request = make_csr(key_out, csr_out, common_name=common_name or socket.getfqdn(), organisation=organisation,
                       organisational_unit=organisational_unit, country=country, key_type=key_type)
    out.print(f"wrote {key_out} (private, mode 0600) and {csr_out}")
    out.print(f"public key SHA-256: {request.public_key_sha256}")
    out.print("send the CSR to the platform's CA (read the SHA-256 out to it over another channel); set "
              "platform.client_key to the key and platform.client_certificate to the certificate it returns")


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, or folders (every file under them), to dry-run.")],
    profile: ProfileName,
    key_file: KeyFile,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    changed_only: Annotated[bool, typer.Option("--changed-only", help="Hide attributes kept as they were.")] = False,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Write here a PNG of each masked or flagged frame, boxes drawn, and index.html tying them to the attribute table (holds source values: keep on site).")] = None,
) -> None:
    """Dry run: show, attribute by attribute, what would leave the hospital, and the gate's verdict.

    Exit 0 when every file would pass or be excluded (out of the profile's scope), 1 when any would
    be quarantined, 2 on usage or unreadable input.
    """
    from agent.deidentify import load_profile
    from agent.process import InstanceProcessor

    if preview is not None:
        from agent.preview import prepare_folder

        prepare_folder(preview)  # before the slow part: a wrong path fails at once
    processor = InstanceProcessor(load_profile(profile), load_key_file(key_file))
    reports = []
    previews: list[PreviewEntry] = []
    taken: set[str] = set()  # PNG names written: the same instance given twice is not overwritten
    worst = 0
    for path in _files_under(paths):
        report, outcome = _check_one(processor, path, changed_only)
        if preview is not None:
            previews.append(_preview_entry(report, outcome, preview, taken))
        del outcome  # its dataset (pixels and all) is not kept for the next file
        worst = max(worst, {"pass": 0, "excluded": 0, "quarantine": 1, "skipped": 0}.get(report["verdict"], 2))
        reports.append(report)
        if not as_json:
            _print_report(report)
    page = None
    if preview is not None:
        from agent.preview import write_preview

        try:
            page = write_preview(preview, previews, profile=processor.profile.name,
                                 key_id=processor.deidentifier.key_id)
        except OSError as exc:
            raise UsageError(f"{preview}: cannot write the preview ({exc.strerror})") from None
    summary = _summary(reports)
    if not as_json and len(reports) > 1:
        out.rule("summary")
        out.print(summary["text"])
    if as_json:
        data: dict[str, Any] = {"profile": processor.profile.name, "key_id": processor.deidentifier.key_id,
                                "files": reports, "summary": summary["counts"]}
        if page is not None:
            data["preview"] = str(page)
        out.print_json(data=data)
    if page is not None:  # on stderr under --json: stdout stays one JSON document
        (err if as_json else out).print(f"preview: {escape(str(page))} (holds source values: keep on site)")
    raise typer.Exit(worst)


def _files_under(paths: list[Path]) -> Iterator[Path]:
    """The files given, and every file under a folder given (in a stable order), as `anonymise`
    takes a folder."""
    from agent.batch import iter_files

    for path in paths:
        if path.is_dir():
            yield from (Path(found) for found in iter_files(path))
        else:
            yield path


def _summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per verdict, and per reason of what would be quarantined or excluded."""
    verdicts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for report in reports:
        verdicts[report["verdict"]] = verdicts.get(report["verdict"], 0) + 1
        if report.get("reason"):
            key = f"{report['verdict']} {report['reason']}"
            reasons[key] = reasons.get(key, 0) + 1
    text = f"{len(reports)} file(s): " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items()))
    if reasons:
        text += "\n" + "\n".join(f"  {key}: {n}" for key, n in sorted(reasons.items()))
    return {"counts": {"files": len(reports), "verdicts": verdicts, "reasons": reasons}, "text": text}


def _check_one(processor: Any, path: Path, changed_only: bool) -> tuple[dict[str, Any], Any]:
    """One file's report, and its Outcome (None when unreadable) for the preview."""
    try:
        outcome = processor.process(path.read_bytes(), path, record=True)
    except OSError as exc:
        return {"file": str(path), "verdict": "unreadable", "detail": f"cannot read ({exc.strerror})"}, None
    except UnreadableInput as exc:
        return {"file": str(path), "verdict": "unreadable", "detail": str(exc)}, None
    report: dict[str, Any] = {"file": str(path)}
    if outcome.status == "skipped":
        return {**report, "verdict": "skipped", "detail": outcome.skip_reason}, outcome
    if outcome.status == "excluded":  # out of scope: nothing is done to it, so nothing to show
        return {**report, "verdict": "excluded", "reason": outcome.refusal.reason.value,
                "detail": outcome.refusal.detail, "attributes": []}, outcome
    if outcome.status == "passed":
        report.update(verdict="pass", output=str(outcome.relative_path))
    else:
        report.update(verdict="quarantine", reason=outcome.refusal.reason.value, detail=outcome.refusal.detail)
    changes = sorted(outcome.result.changes or [], key=lambda c: c.path) if outcome.result is not None else []
    report["attributes"] = [
        {"attribute": c.path, "keyword": c.keyword, "action": c.action, "before": c.before, "after": c.after}
        for c in changes
        if not (changed_only and c.after == c.before)
    ]
    return report, outcome


def _preview_entry(report: dict[str, Any], outcome: Any, folder: Path, taken: set[str]) -> PreviewEntry:
    """The file's part of the page; its frames are drawn now, so no image waits in memory."""
    from agent.preview import AttributeRow, PreviewEntry, render_frames, wants_frames

    entry = PreviewEntry(
        label=report["file"], verdict=report["verdict"], reason=report.get("reason", ""),
        detail=report.get("detail") or "", output=report.get("output", ""),
        attributes=[AttributeRow(r["attribute"], r["keyword"], r["action"], r["before"], r["after"])
                    for r in report.get("attributes", [])])
    result = getattr(outcome, "result", None)
    if result is not None and result.pixels is not None:
        entry.pixels = result.pixels
        if wants_frames(result.pixels):
            try:
                entry.frames = render_frames(folder, outcome.opaque_name, result.dataset, result.pixels, taken)
            except OSError as exc:
                raise UsageError(f"{folder}: cannot write the preview ({exc.strerror})") from None
    return entry


def _print_report(report: dict[str, Any]) -> None:
    out.rule(escape(report["file"]))
    if report.get("attributes"):
        table = Table(show_lines=False, header_style="bold")
        for column in ("Attribute", "Action", "Before", "After"):
            table.add_column(column, overflow="fold")
        for row in report["attributes"]:
            after = "[dim](removed)[/dim]" if row["after"] is None else escape(row["after"])
            name = f"{row['attribute']} {row['keyword']}".strip()
            table.add_row(escape(name), escape(row["action"]), escape(row["before"]), after)
        out.print(table)
    verdict = report["verdict"]
    if verdict == "pass":
        out.print(f"[green]PASS[/green]: would be released as {escape(report['output'])}")
    elif verdict == "quarantine":
        out.print(f"[red]QUARANTINE[/red] ({report['reason']}): {escape(report['detail'])}")
    elif verdict == "excluded":
        out.print(f"[cyan]EXCLUDED[/cyan] ({report['reason']}): {escape(report['detail'])}; not sent, not quarantined")
    else:
        out.print(f"[yellow]{verdict.upper()}[/yellow]: {escape(report['detail'])}")


@app.command()
def anonymise(
    input_dir: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    output_dir: Annotated[Path, typer.Argument(help="Where de-identified files go, named by pseudonyms only.")],
    profile: ProfileName,
    key_file: KeyFile,
    crosswalk: Annotated[Optional[Path], typer.Option("--crosswalk", help="Write uid_mapping.csv and patid_mapping.csv here (identifiable: keep on site).")] = None,
    quarantine_dir: Annotated[Path, typer.Option("--quarantine", help="Where refused instances go, with their reasons.")] = Path("quarantine"),
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Worker processes (default: one per core).")] = None,
    report_file: Annotated[Optional[Path], typer.Option("--report", help="Write one JSON object per input file here (names source paths: keep on site).")] = None,
) -> None:
    """De-identify a folder in batch, in parallel, with a progress bar and a summary."""
    from agent import batch
    from agent.deidentify import load_profile
    from agent.quarantine import EXCLUSIONS

    if not input_dir.is_dir():
        raise UsageError(f"{input_dir}: not a folder")
    resolved_in, resolved_out = input_dir.resolve(), output_dir.resolve()
    for other in (resolved_out, quarantine_dir.resolve()) + ((crosswalk.resolve(),) if crosswalk else ()):
        if other == resolved_in or resolved_in in other.parents:
            raise UsageError(f"{other}: must not be inside the input folder {input_dir}")
    load_profile(profile)  # fail here, once, rather than in every worker
    load_key_file(key_file)
    total = batch.count_files(input_dir)
    records = batch.ReportFile(report_file) if report_file is not None else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as progress:
        task = progress.add_task("de-identifying", total=total)

        def on_report(report: batch.FileReport) -> None:
            progress.advance(task)
            if report.status in ("unreadable", "failed"):
                progress.console.print(f"[yellow]skipped unreadable[/yellow] {escape(report.detail)}")
            elif report.status == "skipped":
                progress.console.print(f"skipped {escape(report.path)}: {escape(report.detail)}")

        try:
            summary = batch.anonymise(input_dir, output_dir, profile=profile, key_file=key_file,
                                      quarantine_dir=quarantine_dir, crosswalk_dir=crosswalk, workers=workers,
                                      on_report=on_report, on_record=records.write if records else None)
        finally:
            if records is not None:
                records.close()
    out.print(f"written {summary.written}, excluded {summary.excluded}, quarantined {summary.quarantined}, "
              f"unreadable {summary.unreadable}"
              + (f", skipped {summary.skipped}" if summary.skipped else "")
              + (f", failed {summary.failed}" if summary.failed else ""))
    for code, count in sorted(summary.reasons.items()):
        if code in {r.value for r in EXCLUSIONS}:
            out.print(f"  excluded {count}: {code} (out of profile {escape(profile)}'s scope: not written)")
        else:
            out.print(f"  quarantined {count}: {code} (see {quarantine_dir})")
    raise typer.Exit(1 if summary.quarantined or summary.unreadable or summary.failed else 0)


ConfigFile = Annotated[Path, typer.Option("--config", help="The agent's YAML configuration (see config.example.yaml).")]
@app.command("support-bundle")
def support_bundle(
    config: ConfigFile,
    out_file: Annotated[Path, typer.Argument(metavar="OUT.tar.gz", help="Where to write the bundle.")],
    log_file: Annotated[Optional[Path], typer.Option("--log", help="The agent's log file, if not the unit's journal.")] = None,
) -> None:
    """Gather what a supplier needs to help: configuration (secrets redacted), versions, status,
    quarantine reasons and the agent's recent log events. No identifier is in any of them."""
    from agent import config as config_module
    from agent.support import build

    members = build(config_module.load(config), out_file, log_file=log_file)
    out.print(f"{escape(str(out_file))}: {', '.join(members)}")


config_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Check the configuration.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    config: ConfigFile,
    platform: Annotated[bool, typer.Option("--platform", help="Also make one TLS connection to the platform.")] = False,
) -> None:
    """Find everything `serve` would refuse, without starting it: keys, paths and their owners,
    the site key, the profile, certificates and their expiry, the clinical schema. Changes nothing.

    Exit 0 when all is well, 1 with warnings only, 2 when serve would refuse to start or deliver.
    """
    from agent.preflight import check as preflight, exit_code

    findings = preflight(config, handshake=platform)
    colours = {"ok": "green", "warning": "yellow", "error": "red"}
    for finding in findings:
        out.print(f"[{colours[finding.level]}]{finding.level:7}[/{colours[finding.level]}] {finding.what}: "
                  f"{escape(finding.detail)}")
    raise typer.Exit(exit_code(findings))


quarantine_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Look at and act on quarantined studies.")
app.add_typer(quarantine_app, name="quarantine")


@app.command()
def serve(config: ConfigFile) -> None:
    """Run the agent: receive from the PACS, de-identify stable studies into the outbox."""
    from agent import config as config_module
    from agent.service import serve as run

    raise typer.Exit(run(config_module.load(config)))


@app.command()
def status(config: ConfigFile, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts per state, oldest study waiting for delivery, disk use, and the quarantine."""
    from agent import config as config_module
    from agent.operate import status as read_status

    report = read_status(config_module.load(config))
    if as_json:
        out.print_json(data=report)
        return
    studies = ", ".join(f"{k} {v}" for k, v in sorted(report["studies"].items())) or "none"
    instances = ", ".join(f"{k} {v}" for k, v in sorted(report["instances"].items())) or "none"
    daemon = report["daemon"]
    if daemon["running"]:
        out.print(f"agent: running (pid {daemon['pid']}, since {daemon['since']})")
    else:
        out.print("agent: [yellow]not running[/yellow] (no `serve` holds this state database): what follows is "
                  "what it left")
    out.print(f"studies: {studies}")
    out.print(f"instances: {instances}")
    oldest = report["oldest_waiting_s"]
    out.print(f"waiting for delivery: {report['waiting_for_delivery']} stud(ies)"
              + (f", oldest {oldest:.0f} s" if oldest is not None else ""))
    out.print(f"spool: {report['spool_mb']} MB of {report['spool_quota_mb']} MB quota; outbox: {report['outbox_mb']} MB;"
              f" disk free: {report['disk_free_mb']} MB")
    out.print(f"excluded (out of the profile's scope, not sent): {report['instances'].get('excluded', 0)} instance(s)")
    out.print(f"quarantine: {len(report['quarantine'])} stud(ies) with series held on site")
    for entry in report["quarantine"]:
        out.print(f"  {entry['study_key']}  {entry['reason']}  {entry['instances']} instance(s)"
                  f" in {len(entry['series'])} series")
    _print_delivery(report["delivery"], report["clinical_batches"])
    _print_optout(report["optout"])
    if report["delivery"]["enabled"]:
        _print_capacity(report["capacity"])
    if report["undelivered_beyond_retention"]:
        out.print(f"[bold red]{report['undelivered_beyond_retention']} stud(ies) undelivered beyond"
                  " spool.retention_days[/]: identifiable copies are kept until the platform acknowledges them")


def _print_delivery(delivery: dict[str, Any], clinical: dict[str, int]) -> None:
    if not delivery["enabled"]:
        out.print(f"delivery: off ({delivery['note']})")
        return
    problem = delivery["problem"]
    if problem is None:
        out.print(f"delivery: to {delivery['platform']}: OK (upload window: {delivery['upload_window']})")
    else:
        out.print(f"delivery: to {delivery['platform']}: [bold red]FAILING[/] ({problem['kind']}) for"
                  f" {problem['since_s']:.0f} s, {problem['attempts']} attempt(s), next in {problem['next_attempt_in_s']:.0f} s:"
                  f" {problem['detail']}")
    if delivery["instances_refused_by_platform"]:
        out.print(f"  {delivery['instances_refused_by_platform']} instance(s) refused by the platform, in quarantine")
    if clinical:
        out.print("clinical batches: " + ", ".join(f"{k} {v}" for k, v in sorted(clinical.items())))


def _print_optout(report: dict[str, Any]) -> None:
    age = "never imported" if report["age_days"] is None else f"imported {report['age_days']:g} day(s) ago"
    out.print(f"opt-out list: {report['entries']} identifier(s), {age}"
              + (f" (mandatory for this profile, at most {report['max_age_days']} days old)" if report["required"] else ""))
    if report["delivery_held"]:
        out.print(f"  [bold red]delivery held[/]: {escape(report['delivery_held'])}")
    studies, retractions = report["studies"], report["retractions"]
    if studies["studies"] or retractions["pending"] or retractions["acknowledged"]:
        out.print(f"  opted out: {studies['studies']} stud(ies) not sent; retractions: {retractions['pending']} pending, "
                  f"{retractions['acknowledged']} acknowledged")


def _print_capacity(capacity: dict[str, Any]) -> None:
    """Bytes waiting, the last day's inflow and drain, and the warning when the outbox grows."""
    gb = 1e9
    out.print(f"capacity: {capacity['bytes_waiting'] / gb:.1f} GB waiting; last 24 h: "
              f"{capacity['received_last_24h_bytes'] / gb:.1f} GB in, {capacity['sent_last_24h_bytes'] / gb:.1f} GB sent"
              + (f"; at most {capacity['capacity_per_day_bytes'] / gb:.0f} GB a day at this cap and window"
                 if capacity["capacity_per_day_bytes"] else ""))
    if capacity["warning"]:
        out.print(f"  [yellow]warning[/yellow]: {escape(capacity['warning'])}")


@quarantine_app.command("list")
def quarantine_list(config: ConfigFile) -> None:
    """Studies with series held on site (a refusal holds its whole series), and instances the
    platform refused: study key, reason, then each held series with its instances and reason."""
    from agent import config as config_module
    from agent.operate import status as read_status

    entries = read_status(config_module.load(config))["quarantine"]
    if not entries:
        out.print("The quarantine is empty: nothing is held on site.")
    for entry in entries:
        rest = "" if entry["study_state"] == "quarantined" else f"  (the rest of the study: {entry['study_state']})"
        out.print(f"{entry['study_key']}  {entry['reason']}  {entry['instances']} instance(s){rest}")
        for series in entry["series"]:
            held = ", ".join(f"{reason} {n}" for reason, n in sorted(series["reasons"].items()))
            out.print(f"  series {series['series_key'] or '(unknown)'}  {series['instances']} instance(s): {held}")


@quarantine_app.command("show")
def quarantine_show(config: ConfigFile, study_key: Annotated[str, typer.Argument(help="A study key from `list`.")]) -> None:
    """A study's held series, its instances with their series and reasons, and its audit trail, as JSON."""
    from agent import config as config_module
    from agent.operate import show

    report = show(config_module.load(config), study_key)
    if report is None:
        raise UsageError(f"no study {study_key}")
    out.print_json(data=report)


Reason = Annotated[Optional[str], typer.Option("--reason", help="Why (required): it goes to the access log with "
                                                                    "your user name (`nmip-agent audit`).")]


@quarantine_app.command("release")
def quarantine_release(config: ConfigFile, study_key: Annotated[str, typer.Argument()], reason: Reason = None) -> None:
    """Release a study's held series: de-identified again (e.g. after a profile fix), delivered, and
    the study's manifest sent again. What the gate still refuses is held again, with its series."""
    from agent import config as config_module
    from agent.operate import release
    from agent.patients import log_operator_action, require_reason

    why = require_reason(reason, "quarantine release")
    loaded = config_module.load(config)
    log_operator_action(loaded, "quarantine_release", study_key, why)
    count = release(loaded, study_key)
    if not count:
        raise UsageError(f"study {study_key} has no quarantined instance")
    out.print(f"released {count} instance(s); the running agent processes them in its next round")


@quarantine_app.command("purge")
def quarantine_purge(config: ConfigFile, study_key: Annotated[str, typer.Argument()], reason: Reason = None) -> None:
    """Delete a quarantined study's identifiable files; its audit trail stays."""
    from agent import config as config_module
    from agent.operate import purge
    from agent.patients import log_operator_action, require_reason

    why = require_reason(reason, "quarantine purge")
    loaded = config_module.load(config)
    log_operator_action(loaded, "quarantine_purge", study_key, why)
    out.print(f"purged {purge(loaded, study_key)} instance(s)")


optout_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The site's opt-out list (National Data Opt-out and local objections), kept keyed.")
app.add_typer(optout_app, name="optout")


@optout_app.command("import")
def optout_import(
    file: Annotated[Path, typer.Argument(help="Hospital Patient IDs or NHS numbers, one per line (a header line and "
                                              "blank lines are skipped).")],
    config: ConfigFile,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Take a file with no identifier (lifts every "
                                                                     "opt-out).")] = False,
) -> None:
    """Replace the opt-out list. Identifiers are kept only as keyed tokens; studies of the patients
    on it are never sent, and those already delivered are retracted."""
    from agent import config as config_module
    from agent.patients import import_list

    summary, listed = import_list(config_module.load(config), file, allow_empty=allow_empty)
    out.print(f"opt-out list imported: {summary.entries} identifier(s)"
              f"{' (first line taken as a header)' if listed.header_skipped else ''}; "
              f"{summary.added} added, {summary.removed} removed since the last import")
    if summary.studies_found:
        out.print(f"{summary.studies_found} stud(ies) held here are of patients on the list: nothing more of them is "
                  f"sent; {summary.retractions_queued} delivered stud(ies) will be retracted (`optout list`)")
    out.print(f"the file itself holds identifiers: keep it on site or delete it ({file})")


@optout_app.command("list")
def optout_list(config: ConfigFile, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """How many identifiers the list holds and when it was imported (never the identifiers),
    studies found opted out, and retraction notices pending."""
    from datetime import datetime, timezone

    from agent import config as config_module
    from agent.patients import list_info

    info, studies, retractions = list_info(config_module.load(config))
    imported = None if info.imported_at is None else datetime.fromtimestamp(info.imported_at, timezone.utc).isoformat(
        timespec="seconds")
    report = {"entries": info.entries, "imported_at": imported, "imported_by": info.operator,
              "studies_opted_out": studies, "retractions": retractions}
    if as_json:
        out.print_json(data=report)
        return
    if imported is None:
        out.print("opt-out list: never imported (`nmip-agent optout import FILE`)")
    else:
        out.print(f"opt-out list: {info.entries} identifier(s), imported {imported} by {info.operator}")
    out.print(f"studies of patients on it: {studies['studies']} ({studies['unsettled']} still being settled)")
    out.print(f"retraction notices: {retractions['pending']} pending, {retractions['acknowledged']} acknowledged")


@optout_app.command("check")
def optout_check(identifier: Annotated[str, typer.Argument(help="A hospital Patient ID or an NHS number; - reads it "
                                                                "from standard input (kept out of shell history).")],
                 config: ConfigFile) -> None:
    """Whether an identifier is on the list (exit 0: it is; 1: it is not). The check is written to
    the access log (not the identifier)."""
    from agent import config as config_module
    from agent.patients import check_identifier

    if identifier == "-":
        identifier = sys.stdin.readline().strip()
    if not identifier:
        raise UsageError("optout check: no identifier given")
    if check_identifier(config_module.load(config), identifier):
        out.print("on the opt-out list")
        return
    out.print("not on the opt-out list")
    raise typer.Exit(1)


@app.command()
def reidentify(
    config: ConfigFile,
    pseudonym: Annotated[Optional[str], typer.Option("--pseudonym", help="A patient pseudonym, as the platform holds it.")] = None,
    study_uid: Annotated[Optional[str], typer.Option("--study-uid", help="A pseudonymous Study Instance UID.")] = None,
    reason: Reason = None,
) -> None:
    """The hospital Patient ID and source studies behind a pseudonym, on site only. Every lookup is
    written to the access log first, with your user name and reason."""
    from agent import config as config_module
    from agent.patients import reidentify as lookup

    found = lookup(config_module.load(config), pseudonym=pseudonym, study_uid=study_uid, reason=reason)
    if not found.patient_ids and not found.studies:
        out.print("nothing found for it here (the lookup is logged)")
        raise typer.Exit(1)
    out.print(f"pseudonym: {found.pseudonym}")
    for patient_id in found.patient_ids:
        out.print(f"hospital Patient ID: {escape(patient_id)}")
    for study in found.studies:
        out.print(f"study {study.study_key} ({study.state}): source Study Instance UID {study.source_study_uid}, "
                  f"pseudonymous {study.pseudonymous_study_uid}")
    out.print(f"logged as access log entry {found.logged.id}")


@app.command()
def audit(config: ConfigFile, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The access log: every re-identification, quarantine release and purge, with who, when and why.
    Exit 1 if an entry was changed or removed behind the agent's back."""
    from datetime import datetime, timezone

    from agent import config as config_module
    from agent.patients import access_log

    entries, broken = access_log(config_module.load(config))
    rows = [{"id": e.id, "at": datetime.fromtimestamp(e.at, timezone.utc).isoformat(timespec="seconds"),
             "operator": e.operator, "action": e.action, "subject": e.subject, "reason": e.reason} for e in entries]
    if as_json:
        out.print_json(data={"entries": rows, "intact": broken is None, "first_broken": broken})
    else:
        if not rows:
            out.print("The access log is empty: no re-identification, release or purge so far.")
        for row in rows:
            out.print(f"{row['id']:>5}  {row['at']}  {escape(str(row['operator']))}  {row['action']}  "
                      f"{escape(str(row['subject']))}  reason: {escape(str(row['reason']))}")
    if broken is not None:
        err.print(f"nmip-agent: the access log was changed behind the agent's back at entry {broken} or just before it")
        raise typer.Exit(1)


def main() -> None:
    """Entry point: one place turns every AgentError into its message and exit code.

    Typer runs in standalone mode, so usage errors print their help and exit 2, and commands'
    exit codes pass through; AgentError propagates out of it to here.
    """
    os.umask(0o077)  # first: whatever any command creates (database, -wal, reports) is the user's alone
    try:
        app()
    except AgentError as exc:
        err.print(f"nmip-agent: {escape(str(exc))}")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
