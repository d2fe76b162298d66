"""The drain budget: after SIGTERM the process exits within ``drain_s``, whatever hangs.

uvicorn first drains connections for up to ``Settings.shutdown_timeout`` (sessions get 1012,
streams and long-polls end, requests finish), then runs the lifespan's shutdown,
then asyncio and the interpreter wind down. Only the first part bounds itself, so:

- ``cancel_and_wait`` cancels background tasks and waits for them, bounded, and
  cancels again while one runs on. One ``cancel()`` is not enough on Python 3.11:
  ``asyncio.wait_for`` swallows a cancellation that arrives just as what it awaits
  completes (CPython gh-86296, fixed in 3.12), and redis-py writes every command
  through it, so a loop that talks to Redis can shrug off a cancel and carry on.
  Presence's keeper did, and SIGTERM never ended the process.
- ``Steps`` runs the lifespan's shutdown in order within ``STOP_S``: a step that
  overruns is logged with where it is stuck, abandoned, and the next one runs.
- ``Watchdog``, armed by SIGTERM (``armed_on_signals``), ends the process from a
  thread of its own if it still runs when the budget is spent.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("aicq")

STOP_S = 3.5  # the lifespan's shutdown, every step together...
STEP_FLOOR_S = 0.1  # ...though a step still gets this much once it is spent (closing a pool takes ms)
AFTER_DRAIN_S = 5.0  # STOP_S, a few floors, then asyncio's and the interpreter's own exit
TASK_STOP_S = 1.0  # a background task's time to end once cancelled
RECANCEL_S = 0.05  # cancel again this often while a task runs on


def drain_s(shutdown_timeout: float) -> float:
    """From SIGTERM to exit, at most: uvicorn's drain, then everything after it."""
    return shutdown_timeout + AFTER_DRAIN_S


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, timeout: float = TASK_STOP_S) -> bool:
    """Cancel ``tasks`` and wait, at most ``timeout`` seconds, until they end; False if
    one did not (it is logged, with where it is stuck). Their outcomes are collected,
    so nothing is logged as never retrieved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stopping = [task for task in tasks if task is not None]
    while running := [task for task in stopping if not task.done()]:
        remaining = deadline - loop.time()
        if remaining <= 0:
            for task in running:
                log.warning("task %s did not stop when cancelled; abandoned:\n%s", task.get_name(), _stack(task))
            return False
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=min(RECANCEL_S, remaining))
    for task in stopping:
        if not task.cancelled() and task.exception() is not None:
            log.warning("task %s failed before it stopped", task.get_name(), exc_info=task.exception())
    return True


class Steps:
    """The shutdown's steps, one after another, all within ``budget`` seconds."""

    def __init__(self, budget: float = STOP_S):
        self._deadline = asyncio.get_running_loop().time() + budget

    def remaining(self) -> float:
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def run(self, name: str, step: Awaitable[Any]) -> None:
        """Await ``step`` until the deadline (or STEP_FLOOR_S); past it, log where it
        hangs and cancel it. A step that fails is logged too: the next ones still run."""
        task = asyncio.ensure_future(step)
        await asyncio.wait({task}, timeout=max(STEP_FLOOR_S, self.remaining()))
        if not task.done():
            log.warning("shutdown: %s did not finish in time; abandoned:\n%s", name, _stack(task))
            await cancel_and_wait(task, timeout=0.1)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("shutdown: %s failed", name, exc_info=task.exception())


def _stack(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


class Watchdog:
    """Ends the process ``seconds`` after ``arm()``, unless it exited by then."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True  # never what keeps the process alive
            self._timer.start()

    def _expire(self) -> None:
        log.error("shutdown overran its %g s budget: exiting now; the threads were at:", self.seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        try:
            faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        except (AttributeError, ValueError, OSError):  # stdout is not a real file
            pass
        os._exit(1)


@contextmanager
def armed_on_signals(watchdog: Watchdog) -> Iterator[None]:
    """Within this block, SIGTERM and SIGINT arm ``watchdog`` and then go to the handler
    in place: uvicorn's, which starts the drain (uvicorn installs it in the main thread
    before the lifespan starts). The watchdog stays armed after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    chained: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            chained[signum] = handler = _arming(watchdog, previous)
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler in chained.items():
            if signal.getsignal(signum) is handler:  # nobody replaced it meanwhile
                signal.signal(signum, handler.previous)


def _arming(watchdog: Watchdog, previous: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    def handler(signum: int, frame: Any) -> None:
        watchdog.arm()
        previous(signum, frame)

    handler.previous = previous  # type: ignore[attr-defined]
    return handler
