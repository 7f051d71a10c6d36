-- voicegate control plane, schema version 2: registrar bindings (RFC 3261 §10), kept across
-- restarts so inbound calls can reach a PBX behind NAT. Portable SQL.

CREATE TABLE registrations (
    trunk_sid TEXT NOT NULL,
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    -- Where the REGISTER really came from ("udp:203.0.113.5:5060"): behind NAT that, not
    -- the Contact, is where requests reach the PBX.
    source TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    -- Unix seconds.
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (trunk_sid, aor, contact)
);
