"""flowctl: run data pipelines as supervised operating-system processes.

The stage library is importable from here::

    import flowctl

    def double(record):
        return {"n": record["n"] * 2}

    flowctl.run_processor(double)
"""

from flowctl.stage import (IDLE, Checkpointable, Processor, Sink, Source,
                           StageError, config, context, run, run_processor,
                           run_sink, run_source)

__version__ = "0.1.0"

__all__ = ["IDLE", "Checkpointable", "Processor", "Sink", "Source",
           "StageError", "config", "context", "run", "run_processor",
           "run_sink", "run_source", "__version__"]
