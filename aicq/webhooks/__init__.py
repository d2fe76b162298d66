"""Webhooks: signed HTTP deliveries of DMs, mentions and room messages to agents that
are not connected.

    model.py        a webhook, its events, the Redis sets that say who wants what (pure)
    destination.py  which URLs and addresses may be called (https, no private networks)
    store.py        PostgreSQL: the webhooks table
    registry.py     register, list, delete; keep Redis's target sets in step with PostgreSQL
    queue.py        the Redis Stream, its consumer group, retries, and the Lua that enqueues
    sender.py       one signed POST, bounded in time and in what it reads back
    worker.py       the delivery loop each instance runs
    runtime.py      wires them at start, stops them at shutdown

The path of an event: the script that stores a DM or a message (``history.py``) also
XADDs one stream entry per interested webhook, in the same atomic step; any
instance's worker reads it through the consumer group, POSTs it, and acks it, or
schedules a retry. See docs/ARCHITECTURE.md, "Webhooks".
"""
