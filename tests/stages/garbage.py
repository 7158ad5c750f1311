"""A command stage that writes text where flowctl frames belong."""

import sys
import time

while True:
    sys.stdout.write("this is not a frame\n")
    sys.stdout.flush()
    time.sleep(0.01)
