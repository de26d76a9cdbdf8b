"""The one retry policy: schedule, attempt loops (sync and async), what is and is not retried."""

from __future__ import annotations

import asyncio
import random

import pytest

from edgemodel.retry import Backoff, retry_async, retry_sync


def test_schedule_is_exponential_and_capped() -> None:
    b = Backoff(first=0.5, cap=4.0, jitter=0.0)
    assert [b.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.delay(10_000) == 4.0  # no overflow on long outages


def test_jitter_stays_within_its_fraction_and_the_cap() -> None:
    b = Backoff(first=1.0, cap=8.0, jitter=0.2)
    rng = random.Random(7)
    delays = [b.delay(3, rng) for _ in range(500)]
    assert min(delays) >= 4.0 * 0.8
    assert max(delays) <= 4.0 * 1.2
    assert len(set(delays)) > 400  # spread, not lockstep
    assert max(b.delay(9, rng) for _ in range(200)) <= 8.0


@pytest.mark.parametrize("kwargs", [{"first": 0}, {"first": 2, "cap": 1}, {"factor": 0.5}, {"jitter": 1.0}])
def test_invalid_backoff_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**kwargs)


def test_retry_sync_retries_only_what_it_is_told_and_reraises_the_last() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"down {len(calls)}")
        return "up"

    out = retry_sync(
        flaky,
        what="flaky",
        attempts=5,
        backoff=Backoff(first=0.1, jitter=0.0),
        retry_on=lambda e: isinstance(e, ConnectionError),
        sleep=slept.append,
    )
    assert out == "up"
    assert len(calls) == 3
    assert slept == [0.1, 0.2]

    def always() -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        retry_sync(
            always,
            what="always",
            attempts=3,
            backoff=Backoff(first=0.1, jitter=0.0),
            retry_on=lambda e: isinstance(e, ConnectionError),
            sleep=slept.append,
        )

    def wrong() -> None:
        calls.append(1)
        raise ValueError("bad request")

    before = len(calls)
    with pytest.raises(ValueError, match="bad request"):
        retry_sync(
            wrong, what="wrong", attempts=5, backoff=Backoff(), retry_on=lambda e: isinstance(e, OSError)
        )
    assert len(calls) == before + 1  # not retried


def test_retry_async_awaits_between_attempts() -> None:
    attempts: list[int] = []
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 4:
            raise TimeoutError
        return len(attempts)

    got = asyncio.run(
        retry_async(
            flaky,
            what="flaky",
            attempts=4,
            backoff=Backoff(first=1, cap=3, jitter=0.0),
            retry_on=lambda e: isinstance(e, TimeoutError),
            sleep=sleep,
        )
    )
    assert got == 4
    assert slept == [1.0, 2.0, 3.0]
