"""Durations and sizes as written in pipeline files: `30s`, `16MiB`."""

from __future__ import annotations

import re

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0,
                  "d": 86400.0}
SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
              "kib": 1024, "mib": 1024**2, "gib": 1024**3}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]|[bB])?\s*$")


def parse_duration(value: object) -> float:
    """Return seconds for `30s`, `500ms`, `1.5m`, `2h`, `7d` or a number.

    A bare number means seconds.  Raise ValueError on anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"invalid duration {value!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_size(value: object) -> int:
    """Return bytes for `16MiB`, `512KiB`, `1MB`, `100` (bytes)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * SIZE_UNITS[unit])


DURATION_HINT = "write a number with a unit: ms, s, m, h or d, as in 30s"
SIZE_HINT = "write a number of bytes or one with a unit: KiB, MiB, GiB, as in 16MiB"
