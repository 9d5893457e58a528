"""Peer health with hysteresis: a peer goes down after `fall` failures in a row and comes back after `rise`
successes in a row, so one lost probe does not move keys, and a flapping peer does not bounce them."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Health:
    up: bool = True
    streak: int = 0  # consecutive results that disagree with `up`

    def record(self, ok: bool, rise: int, fall: int) -> Health:
        if ok == self.up:
            return replace(self, streak=0)
        streak = self.streak + 1
        if streak >= (rise if ok else fall):
            return Health(up=ok, streak=0)
        return replace(self, streak=streak)

    def failed_hard(self) -> Health:
        """A connection refused or reset while forwarding: down at once (passive check)."""
        return Health(up=False, streak=0)
