"""lowbit.progress: an ETA from the mean time per item (rich's 30 s speed window never
filled during GPTQ), elapsed time, and plain lines when stderr is not a terminal."""

from __future__ import annotations

import pytest
from rich.progress import Progress, TimeRemainingColumn

from lowbit import progress
from lowbit.progress import _EtaColumn, eta_seconds, format_seconds, status, track


def test_eta_is_the_mean_item_time_times_the_items_left() -> None:
    assert eta_seconds(3, 30, 45.0) == pytest.approx(405.0)
    assert eta_seconds(30, 30, 45.0) == 0.0
    assert eta_seconds(0, 30, 5.0) is None and eta_seconds(3, None, 5.0) is None
    assert [format_seconds(s) for s in (None, 5, 405, 3723)] == ["-:--", "0:05", "6:45", "1:02:03"]


def test_the_bar_shows_an_eta_when_each_step_outlasts_richs_speed_window() -> None:
    clock = [0.0]
    bar = Progress(get_time=lambda: clock[0])
    task_id = bar.add_task("quantizing blocks", total=30)
    for _ in range(2):  # two blocks of 60 s each
        clock[0] += 60.0
        bar.advance(task_id)
    task = bar.tasks[0]
    assert str(TimeRemainingColumn().render(task)) == "-:--:--"  # rich's own: unknown
    assert str(_EtaColumn().render(task)) == "ETA 28:00"  # 60 s x 28 blocks left


def test_without_a_terminal_each_item_is_a_plain_line_on_stderr(monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    assert list(track(range(3), "quantizing blocks", total=3, enabled=True)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"quantizing blocks {i}/3" for i in (1, 2, 3)]
    assert all(", elapsed " in line and ", ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0:00")


def test_plain_lines_are_throttled_but_the_last_always_shows(monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    assert len(list(track(range(500), "perplexity", total=500, enabled=True))) == 500
    lines = capsys.readouterr().err.splitlines()
    assert lines and len(lines) < 5 and lines[-1].startswith("perplexity 500/500")


def test_status_line_without_a_terminal_and_silence_when_disabled(monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    with status("loading model.gguf", enabled=True):
        pass
    with status("loading quietly", enabled=False):
        pass
    assert list(track(range(2), "quiet", enabled=False)) == [0, 1]
    assert capsys.readouterr().err == "loading model.gguf ...\n"


def test_the_rate_is_items_per_second_or_seconds_per_item() -> None:
    assert progress.format_rate(30, 2.0) == "15.0 it/s"
    assert progress.format_rate(2, 30.0) == "15.0 s/it"  # a GPTQ block
    assert progress.format_rate(0, 5.0) == "-"
    line = progress.progress_line("quantizing blocks", 2, 30, 30.0)
    assert line == "quantizing blocks 2/30, 15.0 s/it, elapsed 0:30, ETA 7:00"


def test_json_output_stays_quiet_even_when_progress_is_forced(monkeypatch, capsys) -> None:
    """`--json`: one JSON document on stdout and no progress on stderr, whatever
    LOWBIT_PROGRESS says; without it the same run reports its steps."""
    import json

    pytest.importorskip("sklearn")
    from lowbit.cli.main import main

    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    monkeypatch.setenv("LOWBIT_PROGRESS", "1")
    main(["inspect", "digits", "--samples", "2", "--measure", "none", "--threads", "1", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["distance"] == "kl" and captured.err == ""
    monkeypatch.setenv("LOWBIT_PROGRESS", "1")
    main(["inspect", "digits", "--samples", "2", "--measure", "none", "--threads", "1"])
    assert "sensitivity gradients 2/2" in capsys.readouterr().err
