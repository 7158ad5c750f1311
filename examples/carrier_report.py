"""A processor built on the stage library: on-time performance by airline.

It reads flight records (the nycflights13 columns, numbers already typed)
and, at the end of the stream, emits one record per airline with its
number of flights, cancellations, late arrivals and mean arrival delay,
worst first.  Airline names come from examples/data/airlines.csv.

Its running totals are its checkpoint state, so a run resumed with
--resume reports on every flight, not only those after the checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from typing import Any, Iterator

import flowctl

LATE_MINUTES = 15
AIRLINES_CSV = os.path.join(os.path.dirname(__file__), "data", "airlines.csv")


class CarrierReport(flowctl.Processor, flowctl.Checkpointable):
    def open(self, config: dict[str, Any]) -> None:
        self.late_minutes = config.get("late_minutes", LATE_MINUTES)
        with open(AIRLINES_CSV, encoding="utf-8", newline="") as file:
            self.names = {row["carrier"]: row["name"]
                          for row in csv.DictReader(file)}
        self.totals: dict[str, dict[str, float]] = defaultdict(
            lambda: {"flights": 0, "cancelled": 0, "late": 0,
                     "delay_sum": 0.0, "arrived": 0})

    def process(self, record: dict[str, Any]) -> None:
        totals = self.totals[record["carrier"]]
        totals["flights"] += 1
        delay = record["arr_delay"]
        if record["dep_time"] is None:
            totals["cancelled"] += 1
        elif delay is not None:
            totals["arrived"] += 1
            totals["delay_sum"] += delay
            if delay >= self.late_minutes:
                totals["late"] += 1

    def save_checkpoint(self) -> bytes:
        return json.dumps(self.totals).encode("utf-8")

    def restore_checkpoint(self, data: bytes) -> None:
        self.totals.update(json.loads(data))

    def checkpoint_info(self) -> dict[str, Any]:
        return {"airlines": len(self.totals)}

    def finish(self) -> Iterator[dict[str, Any]]:
        rows = []
        for carrier, totals in self.totals.items():
            arrived = totals["arrived"] or 1
            rows.append({
                "carrier": carrier,
                "airline": self.names.get(carrier, carrier),
                "flights": totals["flights"],
                "cancelled": totals["cancelled"],
                "late_share": round(totals["late"] / arrived, 3),
                "mean_arrival_delay": round(totals["delay_sum"] / arrived, 1),
            })
        rows.sort(key=lambda row: row["late_share"], reverse=True)
        yield from rows


if __name__ == "__main__":
    flowctl.run(CarrierReport())
