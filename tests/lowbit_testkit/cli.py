"""Checks of how the ``lowbit`` command fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.cli.main import main


def fails_cleanly(capsys, args: list[str], message: str, workdir: Path) -> None:
    """``lowbit ARGS`` exits with code 1 (the run failed on its input) and one line naming the
    problem; nothing is written."""
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == before
