"""Progress bars for long steps (rich), quiet when the output is not a terminal unless asked."""

from __future__ import annotations

import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def progress_bar() -> Progress:
    disable = os.environ.get("COOKIEBAKER_PROGRESS", "auto") == "off"
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        disable=disable,
    )
