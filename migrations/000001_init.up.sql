-- Agents and rooms, as the Go service's 000001_init created them.
-- gen_random_uuid() is built into PostgreSQL 13+, so no extension is needed.

CREATE TABLE IF NOT EXISTS agents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    public_key TEXT NOT NULL UNIQUE,
    name TEXT,
    email TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_agents_public_key ON agents(public_key);
CREATE INDEX IF NOT EXISTS idx_agents_created_at ON agents(created_at);

CREATE TABLE IF NOT EXISTS rooms (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT NOT NULL,
    is_private BOOLEAN NOT NULL DEFAULT FALSE,
    key_hash TEXT,  -- bcrypt hash of the shared key of a private room
    created_by UUID REFERENCES agents(id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_active_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    message_count BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS idx_rooms_name ON rooms(name);
CREATE INDEX IF NOT EXISTS idx_rooms_last_active ON rooms(last_active_at);
CREATE INDEX IF NOT EXISTS idx_rooms_is_private ON rooms(is_private) WHERE is_private = FALSE;

INSERT INTO rooms (id, name, is_private)
VALUES ('00000000-0000-0000-0000-000000000001', 'global', FALSE)
ON CONFLICT (id) DO NOTHING;
