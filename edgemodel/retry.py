"""One retry policy for every client of the product: the agent, the operator, the store client and the demo.

Two shapes of retrying share one schedule (:class:`Backoff`):

* **attempt loops** (a request that may fail transiently and is tried again at once, a bounded number of
  times): :func:`retry_sync` / :func:`retry_async`, built on tenacity;
* **schedulers** (a controller that records a failure and comes back later, e.g. a reconciler's next
  attempt): :meth:`Backoff.delay` gives the wait after the n-th consecutive failure.

The schedule is exponential with a cap and full-range jitter of ``jitter`` (a fraction of the delay), so
a fleet of agents that lost the API server at the same moment do not come back in lockstep.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first``, ``first*factor``, ... capped at ``cap`` seconds, +- ``jitter``."""

    first: float = 0.5
    cap: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.first <= 0 or self.cap < self.first or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff {self!r}: need 0 < first <= cap, factor >= 1, 0 <= jitter < 1")

    def base(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (1 = the first), without jitter."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 64)
        return min(self.cap, self.first * self.factor**exponent)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after ``failures`` consecutive failures, jittered; 0 when nothing failed."""
        base = self.base(failures)
        if base == 0.0 or self.jitter == 0.0:
            return base
        spread = base * self.jitter
        return max(0.0, min(self.cap, base + (rng or random).uniform(-spread, spread)))

    def _wait(self, state: tenacity.RetryCallState) -> float:
        return self.delay(state.attempt_number)


def _log_before_sleep(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("Retrying %s in %.1fs (attempt %d failed: %s)", what, wait, state.attempt_number, exc)

    return before_sleep


def _policy(
    what: str, attempts: int, backoff: Backoff, retry_on: Callable[[BaseException], bool], sleep: object
) -> dict[str, Any]:
    """tenacity's settings for the project's policy: stop, wait, what to retry, the warning, re-raise the last."""
    policy: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(max(1, attempts)),
        "wait": backoff._wait,
        "retry": tenacity.retry_if_exception(retry_on),
        "before_sleep": _log_before_sleep(what),
        "reraise": True,
    }
    if sleep is not None:
        policy["sleep"] = sleep
    return policy


def retry_sync(
    fn: Callable[[], T], *, what: str, attempts: int, backoff: Backoff, retry_on: Callable[[BaseException], bool],
    sleep: Callable[[float], None] | None = None,
) -> T:  # fmt: skip
    """Call ``fn`` up to ``attempts`` times while it raises an exception ``retry_on`` accepts; re-raise the last.

    Exceptions ``retry_on`` refuses propagate at once. A warning names ``what`` before each wait.
    """
    retrying = tenacity.Retrying(**_policy(what, attempts, backoff, retry_on, sleep))
    return retrying(fn)


async def retry_async(
    fn: Callable[[], Awaitable[T]], *, what: str, attempts: int, backoff: Backoff,
    retry_on: Callable[[BaseException], bool], sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:  # fmt: skip
    """The asynchronous :func:`retry_sync`: awaits ``fn()`` and sleeps without blocking the loop."""
    retrying = tenacity.AsyncRetrying(**_policy(what, attempts, backoff, retry_on, sleep))
    return await retrying(fn)
