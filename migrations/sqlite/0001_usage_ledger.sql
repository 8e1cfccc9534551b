-- The usage ledger: one row per request, whatever the door (docs/usage-ledger.md).
-- Times are Unix milliseconds (UTC); costs USD.
CREATE TABLE usage_ledger (
    -- The rowid (no AUTOINCREMENT: its bookkeeping table is written on every insert).
    id INTEGER PRIMARY KEY,
    created_at BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    api_key_id TEXT,
    key_name TEXT,
    group_name TEXT,
    connection TEXT,
    requested_model TEXT,
    model TEXT,
    door TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream BOOLEAN NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cached_tokens BIGINT,
    reasoning_tokens BIGINT,
    cost_usd DOUBLE PRECISION NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    error_type TEXT
);
-- No index on request_id here: request ids are random, so each batch would dirty
-- a page of that index per row (most of the writer's disk writes and a third of
-- its CPU). SQLite is written in-process without a timeout, so a batch is either
-- committed or rolled back and never written twice; PostgreSQL's schema has the
-- unique index that makes a batch retried after a lost answer harmless.
CREATE INDEX usage_ledger_created_at ON usage_ledger (created_at);
CREATE INDEX usage_ledger_key ON usage_ledger (api_key_id, created_at);
CREATE INDEX usage_ledger_group ON usage_ledger (group_name, created_at);
