"""A pass-through processor that crashes on purpose, a set number of times.

Each incarnation passes AFTER records on, then misbehaves while the count
in STATE_FILE is below CRASHES: MODE "exit" exits with code 1, "kill"
sends itself SIGKILL, "hang" sleeps for an hour without reading, writing
or sending control messages, and "exit0" exits with code 0 in mid-stream.  The
count survives restarts, so a run sees exactly CRASHES of them.
"""

import os
import signal
import time

import flowctl

CRASHES = int(os.environ.get("CRASHES", "5"))
AFTER = int(os.environ.get("AFTER", "100"))
MODE = os.environ.get("MODE", "exit")
STATE_FILE = os.environ["STATE_FILE"]


def crashes_so_far() -> int:
    try:
        with open(STATE_FILE) as file:
            return int(file.read() or 0)
    except FileNotFoundError:
        return 0


class Crasher(flowctl.Processor):
    def open(self, config):
        self.seen = 0

    def process(self, record):
        self.seen += 1
        crashes = crashes_so_far()
        if self.seen > AFTER and crashes < CRASHES:
            with open(STATE_FILE, "w") as file:
                file.write(str(crashes + 1))
            if MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if MODE == "hang":
                time.sleep(3600)
            os._exit(0 if MODE == "exit0" else 1)
        return record


if __name__ == "__main__":
    flowctl.run(Crasher())
