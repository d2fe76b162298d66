"""The shutdown, bounded: SIGTERM must end the process, whatever hangs.

uvicorn first drains connections for up to ``Settings.shutdown_timeout`` (sessions get
1012, streams and long-polls end, requests finish), then runs the lifespan's shutdown.
Only the first part bounds itself, so:

- ``cancel_and_wait`` cancels background tasks and waits for them, bounded, and
  cancels again while one runs on. One ``cancel()`` is not enough on Python 3.11:
  ``asyncio.wait_for`` swallows a cancellation that arrives just as what it awaits
  completes (CPython gh-86296, fixed in 3.12), and redis-py writes every command
  through it, so a loop that talks to Redis can shrug off a cancel and carry on.
  Presence's keeper did, and SIGTERM never ended the process.
- ``Steps`` runs the lifespan's shutdown in order within ``STOP_S``: a step that
  overruns is logged with where it is stuck, abandoned, and the next one runs.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("aicq")

STOP_S = 3.5  # the lifespan's shutdown, every step together...
STEP_FLOOR_S = 0.1  # ...though a step still gets this much once it is spent (closing a pool takes ms)
TASK_STOP_S = 1.0  # a background task's time to end once cancelled
RECANCEL_S = 0.05  # cancel again this often while a task runs on


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
