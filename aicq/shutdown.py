"""Stopping background tasks for sure: SIGTERM must end the process.

``cancel_and_wait`` cancels background tasks and waits for them, bounded, and
cancels again while one runs on. One ``cancel()`` is not enough on Python 3.11:
``asyncio.wait_for`` swallows a cancellation that arrives just as what it awaits
completes (CPython gh-86296, fixed in 3.12), and redis-py writes every command
through it, so a loop that talks to Redis can shrug off a cancel and carry on.
Presence's keeper did, and SIGTERM never ended the process.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

log = logging.getLogger("aicq")

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


def _stack(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()
