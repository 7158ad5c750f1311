"""Prometheus metrics of a run, served on 127.0.0.1 with --metrics-port.

The values are read from the orchestrator's view of its stages when a
scrape arrives, so they match what `flowctl status` and the summary show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from flowctl.supervisor import Run

METRICS_ADDRESS = "127.0.0.1"
STATES = ("starting", "running", "stopping", "backoff", "finished",
          "failed", "stopped")
COUNTERS = (
    ("records_in", "Records a stage has read."),
    ("records_out", "Records a stage has written."),
    ("frames_in", "Batch frames a stage has read."),
    ("frames_out", "Frames a stage has written."),
    ("bytes_in", "Bytes a stage has read from its input pipes."),
    ("bytes_out", "Bytes a stage has written to its output pipes."),
)


class RunCollector:
    """Turns the stages of one run into metric families at scrape time."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def collect(self) -> Iterator:
        labels = ["run", "pipeline", "stage"]
        run = self.run
        stages = list(run.stages.values())
        for name, help_text in COUNTERS:
            family = CounterMetricFamily(f"flowctl_stage_{name}", help_text,
                                         labels=labels)
            for stage in stages:
                family.add_metric([run.run_id, run.pipeline.name,
                                   stage.spec.id],
                                  stage.totals.get(name, 0))
            yield family
        restarts = CounterMetricFamily(
            "flowctl_stage_restarts", "Times a stage has been restarted.",
            labels=labels)
        state = GaugeMetricFamily(
            "flowctl_stage_state", "1 for the state a stage is in, else 0.",
            labels=labels + ["state"])
        for stage in stages:
            key = [run.run_id, run.pipeline.name, stage.spec.id]
            restarts.add_metric(key, stage.restarts)
            for name in STATES:
                state.add_metric(key + [name], 1 if stage.state == name else 0)
        yield restarts
        yield state


def serve_metrics(run: Run, port: int) -> int:
    """Start the metrics endpoint in a background thread; return its port.

    Port 0 picks a free port.  Raise OSError when the port cannot be bound.
    """
    registry = CollectorRegistry()
    registry.register(RunCollector(run))
    server, _ = start_http_server(port, addr=METRICS_ADDRESS,
                                  registry=registry)
    return server.server_port
