DROP TABLE IF EXISTS server_keys;
DROP TABLE IF EXISTS webhooks;
DROP INDEX IF EXISTS idx_agents_lower_name;
