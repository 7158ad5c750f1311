"""A processor that ignores SIGTERM, has a child process, and never ends.

It starts `sleep 600` twice: once in its own process group, and once in a
new session (as a daemonising program would), then passes records on.
After the end of its input it waits forever instead of finishing.
"""

import signal
import subprocess
import time

import flowctl

signal.signal(signal.SIGTERM, signal.SIG_IGN)
children = [subprocess.Popen(["sleep", "600"]),
            subprocess.Popen(["sleep", "600"], start_new_session=True)]


class Stubborn(flowctl.Processor):
    def process(self, record):
        return record

    def finish(self):
        while True:
            time.sleep(1)


if __name__ == "__main__":
    flowctl.run(Stubborn())
