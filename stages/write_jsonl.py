"""write-jsonl: write each record as one line of JSON."""

from __future__ import annotations

import json
from typing import Any

from flowctl.stage import Sink, run
from flowctl.stages._common import open_output


class WriteJsonl(Sink):
    def open(self, config: dict[str, Any]) -> None:
        self.file = open_output(config["path"])
        self.encode = json.JSONEncoder(ensure_ascii=False, default=str,
                                       separators=(",", ":")).encode

    def write_batch(self, records: list[Any]) -> None:
        encode = self.encode
        self.file.write("".join([encode(record) + "\n" for record in records]))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


if __name__ == "__main__":
    run(WriteJsonl())
