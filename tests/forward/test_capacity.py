"""What a cap and an upload window can send a day, and the warning when the outbox grows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.config import Config, PlatformConfig
from agent.operate import capacity, window_hours


def _config(window: str, cap: float) -> Config:
    platform = replace(PlatformConfig(), dicomweb_url="https://platform.example.org/dicom-web",
                       upload_window=window, bandwidth_mbit_s=cap)
    return replace(Config(), platform=platform, source=Path("config.yaml"))


def test_the_readmes_example_sends_about_108_gb_a_night() -> None:
    assert window_hours("19:00-07:00") == 12 and window_hours("") == 24 and window_hours("07:00-19:30") == 12.5
    report = capacity(_config("19:00-07:00", 20), received_day=90 * 10**9, sent_day=80 * 10**9, waiting=5 * 10**9)
    assert report["capacity_per_day_bytes"] == 108 * 10**9
    assert report["warning"] is None


def test_more_in_than_out_warns_with_the_cap_or_window_that_would_drain_it() -> None:
    report = capacity(_config("19:00-07:00", 20), received_day=150 * 10**9, sent_day=108 * 10**9, waiting=40 * 10**9)
    assert report["warning"] is not None
    assert "150 GB arrived" in report["warning"] and "28 Mbit/s" in report["warning"] and "16.7 h" in report["warning"]


def test_no_cap_no_warning() -> None:
    assert capacity(_config("19:00-07:00", 0), 10**13, 0, 0)["capacity_per_day_bytes"] is None
