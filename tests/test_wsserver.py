"""The light stand-ins for asyncio.Queue and asyncio.Event in each WebSocket connection."""

from __future__ import annotations

import asyncio

import pytest

from aicq.edge.wsserver import Flag, Mailbox


async def test_mailbox_delivers_in_order_and_wakes_its_reader() -> None:
    box = Mailbox()
    assert box.empty()
    box.put_nowait(1)
    box.put_nowait(2)
    assert not box.empty()
    assert [await box.get(), await box.get()] == [1, 2]
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()
    box.put_nowait(3)
    assert await asyncio.wait_for(reader, 1) == 3
    assert box.empty()


async def test_mailbox_reader_can_be_cancelled_and_read_again() -> None:
    box = Mailbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    box.put_nowait("after")
    assert await asyncio.wait_for(box.get(), 1) == "after"


async def test_flag_wakes_every_waiter_and_can_be_cleared() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    await asyncio.wait_for(flag.wait(), 1)  # set: returns at once
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    flag.set()
