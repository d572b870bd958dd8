"""Run small dense fits with one BLAS thread (tiny matrices gain nothing from threads; spinning ones starve others).

Measured on 2 cores next to a training run: a 15-run scaling-law fit took 0.24 s with one OpenBLAS thread and
2-3 s with two. threadpoolctl is optional; without it this is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _limit() -> contextlib.AbstractContextManager[Any]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def single_blas_thread(fn: F) -> F:
    """Decorator: call `fn` with BLAS limited to one thread, restoring the previous limits afterwards."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _limit():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
