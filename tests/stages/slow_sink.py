"""A sink that sleeps DELAY seconds per record and appends it to PATH."""

import json
import os
import time

import flowctl

DELAY = float(os.environ.get("DELAY", "0.01"))


class SlowSink(flowctl.Sink):
    def open(self, config):
        self.file = open(config["path"], "a", encoding="utf-8")

    def write(self, record):
        time.sleep(DELAY)
        self.file.write(json.dumps(record) + "\n")

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


if __name__ == "__main__":
    flowctl.run(SlowSink())
