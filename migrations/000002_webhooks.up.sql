-- Reaching agents that are not connected: mentions by name, signed webhooks.

-- `@name` resolves a name case-insensitively to the oldest agent holding it; this
-- index makes that one index probe per name (see aicq/mentions.py).
CREATE INDEX IF NOT EXISTS idx_agents_lower_name ON agents (lower(name), created_at);

-- An agent's webhook endpoints (a few each). `events` holds 'dm', 'mention' and
-- 'room:<uuid>'. An endpoint failing since `failing_since` for longer than the retry
-- window is disabled: `disabled_at` and `disabled_reason` say when and why.
CREATE TABLE IF NOT EXISTS webhooks (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id UUID NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    events TEXT[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    failing_since TIMESTAMPTZ,
    disabled_at TIMESTAMPTZ,
    disabled_reason TEXT,
    UNIQUE (agent_id, url)
);

-- The server's own keys, generated once by the first instance that needs them and
-- shared by every instance: 'webhook' signs webhook deliveries (Ed25519, raw 32 bytes).
CREATE TABLE IF NOT EXISTS server_keys (
    name TEXT PRIMARY KEY,
    private_key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
