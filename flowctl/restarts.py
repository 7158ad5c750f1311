"""Restart policies: whether a stage that exited is started again, when,
and when the run gives up.

A `RestartPolicy` is the setting in the pipeline file (`spec.supervisor.restart`
as the default, a stage's own `restart` block over it):

    policy        never | on-failure | always (default never, but
                  on-failure when checkpointing recovers automatically)
                  on-failure restarts a stage that exited with a code
                  outside its success_exit_codes, was killed by a signal,
                  or stopped answering; always also restarts a stage that
                  exited cleanly before the end of its stream.
    backoff       initial 1s, max 30s, multiplier 2, jitter 0.1: the n-th
                  restart in a row waits initial * multiplier**(n-1),
                  capped at max, then moved by up to +-jitter of itself.
    max_restarts  5, within window 60s: one more failure inside the
                  window fails the run, like an OTP supervisor's restart
                  intensity or systemd's start limit.

The delay grows while failures follow each other; a stage that has run
for longer than `max` since its last start begins again at `initial`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

POLICIES = ("never", "on-failure", "always")


@dataclass(frozen=True)
class RestartPolicy:
    """The restart settings of one stage, with their defaults."""

    # "" when the pipeline file does not set it: never, or on-failure
    # with checkpoint recovery in auto mode.
    policy: str = ""
    initial: float = 1.0
    max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    max_restarts: int = 5
    window: float = 60.0


class RestartTracker:
    """Counts one stage's restarts and computes the next delay."""

    def __init__(self, policy: RestartPolicy,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self.total = 0
        self.streak = 0
        self.recent: deque[float] = deque()

    def wants_restart(self, failed: bool) -> bool:
        """Return whether the policy restarts a stage that ended this way."""
        if self.policy.policy in ("never", ""):
            return False
        return failed or self.policy.policy == "always"

    def over_limit(self, now: float) -> bool:
        """Return whether one more restart now would exceed the limit."""
        while self.recent and now - self.recent[0] > self.policy.window:
            self.recent.popleft()
        return len(self.recent) >= self.policy.max_restarts

    def next_delay(self, now: float, ran_for: float) -> float:
        """Record a restart at `now` and return how long to wait first."""
        if ran_for > self.policy.max:
            self.streak = 0
        self.streak += 1
        self.total += 1
        self.recent.append(now)
        base = min(self.policy.max,
                   self.policy.initial
                   * self.policy.multiplier ** (self.streak - 1))
        spread = base * self.policy.jitter
        return max(0.0, base + self.rng.uniform(-spread, spread))
