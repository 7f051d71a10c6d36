-- voicegate control plane, schema version 4: the calls a node has up, so that after a crash
-- or kill the next start can close them out with a record. A row lives from admission to the
-- call's record. Portable SQL.

CREATE TABLE calls_in_progress (
    -- voicegate's own id for the call (unique per call, unlike a forked Call-ID).
    call_sid TEXT PRIMARY KEY,
    -- Which node holds the call (`store.node`): a node closes out only its own.
    node TEXT NOT NULL,
    call_id TEXT NOT NULL,
    trunk_sid TEXT,
    number TEXT NOT NULL,
    remote TEXT NOT NULL,
    transport TEXT NOT NULL,
    direction TEXT NOT NULL,
    -- Unix milliseconds; answered_at is NULL until the call is answered.
    started_at INTEGER NOT NULL,
    answered_at INTEGER
);

CREATE INDEX calls_in_progress_node ON calls_in_progress (node);
