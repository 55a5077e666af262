"""The compute-once cache: values are kept, failures are shared only with waiting callers."""

from __future__ import annotations

import threading
import time
from typing import Callable, List

from miniwdl_podman._once import Once


def test_a_value_is_computed_once_for_concurrent_and_later_callers() -> None:
    """Eight concurrent callers and a later one get the one value computed once."""
    once: Once[int] = Once()
    calls: List[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.1)
        return 42

    got: List[int] = []
    threads = [threading.Thread(target=lambda: got.append(once.get("k", compute)[0]))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [42] * 8 and once.get("k", compute) == (42, False) and len(calls) == 1


def test_a_failure_reaches_the_waiters_and_the_next_caller_tries_again() -> None:
    """A failed computation fails the callers waiting on it, is not kept, and the next
    caller computes again (and may succeed)."""
    once: Once[str] = Once()
    started = threading.Event()
    release = threading.Event()

    def failing() -> str:
        started.set()
        release.wait(5)
        raise RuntimeError("registry down")

    errors: List[str] = []

    def caller(compute: Callable[[], str]) -> None:
        try:
            once.get("img", compute)
        except RuntimeError as exn:
            errors.append(str(exn))

    first = threading.Thread(target=caller, args=(failing,))
    first.start()
    started.wait(5)
    second = threading.Thread(target=caller, args=(lambda: "never computed by a waiter",))
    second.start()
    time.sleep(0.1)  # the second caller is waiting on the first's computation
    release.set()
    first.join()
    second.join()
    assert errors == ["registry down", "registry down"]
    assert once.get("img", lambda: "pulled") == ("pulled", True)
