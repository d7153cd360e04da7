"""`wait_for`: poll a condition, bounded in time and count, with a message saying what was awaited."""

from __future__ import annotations

import time


class WaitTimeout(AssertionError):
    pass


def wait_for(fn, timeout: float = 10.0, what: str = "condition", interval: float = 0.05, max_polls: int = 100000):
    """Call `fn` until it returns a truthy value (returned); raise WaitTimeout after `timeout` s.

    Exceptions from `fn` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(max_polls):
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
