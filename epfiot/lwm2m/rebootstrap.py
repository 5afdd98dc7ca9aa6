"""The re-bootstrap loop rule: when bootstrapping again means that a client did not take what it was
written.

A client whose writes were rejected still acknowledges Bootstrap-Finish, then bootstraps again, and again
(docs/things.md). A device that reboots soon after its bootstrap also bootstraps again, once. So one new
bootstrap after a Finish is fine; ``count`` bootstraps of an endpoint with the same configuration within
``window`` seconds are a loop, and the thing is marked failed until a Finish stands for a whole window
without a new bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_COUNT = 3
DEFAULT_WINDOW = 60.0


@dataclass(frozen=True)
class RebootstrapRule:
    count: int = DEFAULT_COUNT
    window: float = DEFAULT_WINDOW  # seconds; 0 turns the rule off

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 2:
            raise ValueError(
                "rebootstrap count must be an integer of at least 2 (a loop is 2 bootstraps or more)"
            )
        if not self.window >= 0:
            raise ValueError("rebootstrap window must not be negative")


class FinishHistory:
    """The recent Bootstrap-Finish times of each endpoint (the last ``count - 1``, with the configuration
    revision they were for), pruned as they leave the window. Plain tuples of numbers: the garbage
    collector does not track them, which matters with tens of thousands of endpoints."""

    def __init__(self, rule: RebootstrapRule) -> None:
        self.rule = rule
        self._finishes: dict[str, tuple[int, tuple[float, ...]]] = {}
        self._prune_at = 4096

    def loop_error(self, endpoint: str, revision: int, now: float) -> str | None:
        """Why a bootstrap of ``endpoint`` starting ``now`` makes a loop, or None when it does not."""
        if self.rule.window == 0:
            return None
        entry = self._finishes.get(endpoint)
        if entry is None or entry[0] != revision:
            return None
        recent = [t for t in entry[1] if now - t < self.rule.window]
        if len(recent) < self.rule.count - 1:
            return None
        return (
            f"bootstrapped again {now - recent[-1]:.1f} s after Bootstrap-Finish, {len(recent) + 1} times within "
            f"{now - recent[0]:.1f} s (the client probably rejected the configuration or could not register)"
        )

    def finished(self, endpoint: str, revision: int, now: float) -> None:
        if len(self._finishes) >= self._prune_at:  # amortised: at most every doubling
            horizon = now - self.rule.window
            self._finishes = {k: v for k, v in self._finishes.items() if v[1][-1] >= horizon}
            self._prune_at = max(4096, 2 * len(self._finishes))
        entry = self._finishes.get(endpoint)
        earlier = entry[1] if entry is not None and entry[0] == revision else ()
        earlier = earlier[max(0, len(earlier) - (self.rule.count - 2)) :]  # with this one: count - 1
        self._finishes[endpoint] = (revision, (*earlier, now))

    def last(self, endpoint: str) -> tuple[int, float] | None:
        """The revision and time of the endpoint's last Finish."""
        entry = self._finishes.get(endpoint)
        return None if entry is None else (entry[0], entry[1][-1])
