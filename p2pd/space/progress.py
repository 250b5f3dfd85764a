"""Transfer progress: a ``rich`` bar on stderr, or JSON lines with ``--json``.

``rich`` draws bytes, rate and time left from the updates it is given, and falls back
to a final line when stderr is not a terminal.  JSON lines are throttled to one per
:data:`JSON_INTERVAL` (and the last one), so a fast transfer does not flood a pipe.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from p2pd.commands import Output

#: Seconds between two JSON progress lines.
JSON_INTERVAL = 0.25


class Bar:
    """One transfer's progress; ``close()`` when it ends."""

    def __init__(self, output: Output, event: str, file_id: bytes, name: str, total: int) -> None:
        self.output = output
        self.event = event
        self.file_id = file_id
        self.name = name
        self.total = total
        self.done = 0
        self._last_json = -JSON_INTERVAL
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if not output.json_mode:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=output.err),
            )
            self._progress.start()
            self._task = self._progress.add_task(name, total=total)

    def update(self, done: int, *, force: bool = False) -> None:
        if done == self.done and not force:
            return
        self.done = done
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)
            return
        now = time.monotonic()
        if force or done >= self.total or now - self._last_json >= JSON_INTERVAL:
            self._last_json = now
            elapsed = now - self._started
            self.output.event(
                {
                    "event": self.event,
                    "id": self.file_id.hex(),
                    "name": self.name,
                    "bytes": done,
                    "total": self.total,
                    "rate": round(done / elapsed, 1) if elapsed > 0 else 0.0,
                },
                None,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
