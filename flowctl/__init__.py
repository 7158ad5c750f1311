"""flowctl: run data pipelines as supervised operating-system processes.

The stage library is importable from here::

    import flowctl

    def double(record):
        return {"n": record["n"] * 2}

    flowctl.run_processor(double)
"""

__version__ = "0.1.0"

__all__ = ["IDLE", "Checkpointable", "Processor", "Sink", "Source",
           "StageError", "config", "context", "run", "run_processor",
           "run_sink", "run_source", "__version__"]


def __getattr__(name: str) -> object:
    # The stage library is loaded on first use, so that the orchestrator,
    # which imports this package but runs no stage, does not pay for it.
    if name in __all__:
        from flowctl import stage
        return getattr(stage, name)
    raise AttributeError(f"module 'flowctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
