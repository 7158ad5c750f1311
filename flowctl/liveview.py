"""The live per-stage table drawn on a terminal while a run runs.

Kept apart from `flowctl.display` so that rich is imported only when a
terminal will show it.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from flowctl.display import (REFRESH_INTERVAL, View, format_count,
                             format_rate, throughput_count)

if TYPE_CHECKING:
    from flowctl.process import StageProcess


class LiveView(View):
    """A per-stage table redrawn in place on a terminal."""

    def __init__(self, run_id: str, pipeline_name: str,
                 console_file: TextIO = sys.stdout,
                 stream: TextIO = sys.stderr) -> None:
        super().__init__(run_id, stream)
        self.pipeline_name = pipeline_name
        self.console = Console(file=console_file)
        self.live: Live | None = None
        self.last_refresh = 0.0
        self.current_rates: dict[str, float | None] = {}

    def start(self, stages: list[StageProcess]) -> None:
        super().start(stages)
        self.live = Live(self._table(), console=self.console,
                         auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def event(self, message: str, stage_id: str | None = None) -> None:
        prefix = f"[{stage_id}] " if stage_id else ""
        self._print(Text(f"{prefix}{message}", style="dim"))

    def stderr_line(self, stage_id: str, line: str) -> None:
        text = Text(f"[{stage_id}] ", style="cyan")
        text.append(line)
        self._print(text)

    def _print(self, text: Text) -> None:
        if self.live is not None:
            self.live.console.print(text)
        else:
            self.stream.write(text.plain + "\n")

    def tick(self) -> None:
        now = time.monotonic()
        if self.live is None or now - self.last_refresh < REFRESH_INTERVAL:
            return
        self.last_refresh = now
        for stage in self.stages:
            count = throughput_count(stage)
            if count is not None:
                self.current_rates[stage.spec.id] = self.rates.update(
                    stage.spec.id, count, now)
        self.live.update(self._table(), refresh=True)

    def _table(self) -> Table:
        table = Table(title=f"{self.pipeline_name}  run {self.run_id}",
                      title_justify="left", expand=False)
        for column in ("stage", "kind", "state", "pid"):
            table.add_column(column)
        for column in ("restarts", "in", "out", "rate"):
            table.add_column(column, justify="right")
        for stage in getattr(self, "stages", []):
            style = {"failed": "red", "finished": "green",
                     "stopping": "yellow"}.get(stage.state, "")
            table.add_row(
                stage.spec.id, stage.spec.label[:30],
                Text(stage.state, style=style),
                str(stage.pid or "-") if stage.alive else "-",
                str(stage.restarts),
                format_count(stage.totals.get("records_in")),
                format_count(stage.totals.get("records_out")),
                format_rate(self.current_rates.get(stage.spec.id)))
        return table

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
            self.live.stop()
            self.live = None
