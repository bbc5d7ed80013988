"""The progress bar and its silent stand-in take the same calls."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from rich.progress import Progress

from cookiebaker.progress import SilentProgress, progress_bar


def _use(progress) -> None:  # noqa: ANN001  the calls the stages make
    with progress as bar:
        task = bar.add_task("ingest", total=3)
        bar.update(task, description="ingest a.json")
        bar.advance(task)
        bar.advance(task, 2)


@pytest.mark.parametrize(("setting", "kind"), [("off", SilentProgress), ("auto", Progress)])
def test_progress_bar_follows_the_setting(monkeypatch, setting: str, kind: type) -> None:
    monkeypatch.setenv("COOKIEBAKER_PROGRESS", setting)
    progress = progress_bar()
    assert isinstance(progress, kind)
    _use(progress)


def test_the_silent_stand_in_takes_what_rich_takes() -> None:
    for name in ("add_task", "update", "advance"):
        ours, theirs = inspect.signature(getattr(SilentProgress, name)), inspect.signature(getattr(Progress, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name


def test_silent_progress_does_not_load_rich() -> None:
    code = ("import os, sys; os.environ['COOKIEBAKER_PROGRESS'] = 'off'\n"
            "from cookiebaker.progress import progress_bar\n"
            "with progress_bar() as bar: bar.advance(bar.add_task('x', total=1))\n"
            "print('rich' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
