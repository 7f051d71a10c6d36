-- voicegate control plane, schema version 3: what a flow does around a hand-off to an agent.
-- Portable SQL: one column per ALTER (SQLite allows no more), constant defaults so existing
-- flows keep today's behaviour.

-- 1: after the hand-off the bot keeps hearing both parties (listen-only). Stored as 0/1 like
-- the other booleans.
ALTER TABLE flows ADD COLUMN agent_assist INTEGER NOT NULL DEFAULT 0;

-- When the agent leg fails (busy, no answer, error): 'hangup' or 'bot' (back to the bot).
ALTER TABLE flows ADD COLUMN fallback TEXT NOT NULL DEFAULT 'hangup';
