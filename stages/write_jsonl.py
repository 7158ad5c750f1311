"""write-jsonl: write each record as one line of JSON."""

from __future__ import annotations

import json
from typing import Any

from flowctl.stage import run
from flowctl.stages._files import FileSink


class WriteJsonl(FileSink):
    def open(self, config: dict[str, Any]) -> None:
        super().open(config)
        self.encode = json.JSONEncoder(ensure_ascii=False, default=str,
                                       separators=(",", ":")).encode

    def write_batch(self, records: list[Any]) -> None:
        encode = self.encode
        self.file.write("".join([encode(record) + "\n" for record in records]))


if __name__ == "__main__":
    run(WriteJsonl())
