"""A pass-through processor that crashes on purpose, a set number of times.

Each incarnation passes AFTER records on, then crashes (MODE "exit" exits
with code 1, "kill" sends itself SIGKILL) while the count in STATE_FILE is
below CRASHES.  The count survives restarts, so a run sees exactly CRASHES
crashes.
"""

import os
import signal

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
        if self.seen > AFTER and crashes_so_far() < CRASHES:
            with open(STATE_FILE, "w") as file:
                file.write(str(crashes_so_far() + 1))
            if MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
        return record


if __name__ == "__main__":
    flowctl.run(Crasher())
