-- voicegate control plane, schema version 1.
-- Portable SQL only (TEXT/INTEGER, plain constraints) so a PostgreSQL backend can reuse it.
-- Accounts are implicit: an account_sid column. Ids are strings chosen by the application.
-- Dates are ISO 8601 UTC text with milliseconds ("2025-01-02T03:04:05.678Z"): text order is
-- time order.

CREATE TABLE trunks (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    name TEXT NOT NULL,
    nso_code TEXT NOT NULL,
    domain_name TEXT NOT NULL,
    status TEXT NOT NULL,
    auth_type TEXT NOT NULL,
    registration_enabled INTEGER NOT NULL,
    edge_preference TEXT NOT NULL,
    secure_trunking TEXT NOT NULL,
    max_concurrent_calls INTEGER NULL,
    calls_per_minute INTEGER NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    CONSTRAINT trunks_account_name UNIQUE (account_sid, name)
);

CREATE TABLE phone_numbers (
    id TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    trunk_sid TEXT NOT NULL,
    number TEXT NOT NULL,
    mode TEXT NOT NULL,
    flow_id TEXT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    -- Unique across all accounts: a number routes to exactly one trunk.
    CONSTRAINT phone_numbers_number UNIQUE (number)
);
CREATE INDEX phone_numbers_trunk ON phone_numbers (trunk_sid);

CREATE TABLE whitelisted_ips (
    id TEXT PRIMARY KEY,
    trunk_sid TEXT NOT NULL,
    ip TEXT NOT NULL,
    mask INTEGER NOT NULL,
    date_created TEXT NOT NULL,
    CONSTRAINT whitelisted_ips_unique UNIQUE (trunk_sid, ip, mask)
);

CREATE TABLE destination_uris (
    id TEXT PRIMARY KEY,
    trunk_sid TEXT NOT NULL,
    uri TEXT NOT NULL,
    priority INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    date_created TEXT NOT NULL,
    CONSTRAINT destination_uris_unique UNIQUE (trunk_sid, uri)
);

CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    trunk_sid TEXT NOT NULL,
    user_name TEXT NOT NULL,
    password TEXT NOT NULL,
    friendly_name TEXT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    CONSTRAINT credentials_user UNIQUE (trunk_sid, user_name)
);

CREATE TABLE trunk_settings (
    trunk_sid TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    PRIMARY KEY (trunk_sid, name)
);

CREATE TABLE flows (
    id TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    name TEXT NOT NULL,
    stream_url TEXT NOT NULL,
    protocol TEXT NOT NULL,
    direction TEXT NOT NULL,
    custom_parameters TEXT NOT NULL,
    on_stream_end TEXT NOT NULL,
    date_created TEXT NOT NULL,
    date_updated TEXT NOT NULL
);
CREATE INDEX flows_account ON flows (account_sid);
