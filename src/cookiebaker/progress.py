"""Progress bars for long steps (rich), quiet when the output is not a terminal unless asked."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from rich.progress import Progress


class SilentProgress:
    """What :func:`progress_bar` gives when progress is turned off: the same calls, nothing shown, rich not loaded."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> int:
        return 0

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields: Any) -> None:
        return None

    def advance(self, task_id: int, advance: float = 1) -> None:
        return None


def progress_bar() -> Progress | SilentProgress:
    """A progress bar, or a silent stand-in when ``COOKIEBAKER_PROGRESS=off``."""
    if os.environ.get("COOKIEBAKER_PROGRESS", "auto") == "off":
        return SilentProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
