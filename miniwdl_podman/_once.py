"""A per-key compute-once cache for concurrent callers (image pulls, builds, identities).

The first caller for a key computes the value; callers arriving meanwhile wait for it. A value
is kept for every later caller in the process; a failure is shared only with the callers that
were waiting on it, and the next caller computes again (a registry that was down for one
attempt of a task is asked again by its retry).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Dict, Generic, Tuple, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: Dict[str, Future[T]] = {}

    def get(self, key: str, compute: Callable[[], T]) -> Tuple[T, bool]:
        """(the value for ``key``, whether this call computed it)."""
        with self._lock:
            fut = self._futures.get(key)
            owner = fut is None
            if fut is None:
                fut = self._futures[key] = Future()
        if not owner:
            return fut.result(), False
        try:
            value = compute()
        except BaseException as exn:
            with self._lock:
                if self._futures.get(key) is fut:
                    del self._futures[key]
            fut.set_exception(exn)
            raise
        fut.set_result(value)
        return value, True
