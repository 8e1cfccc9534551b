-- Managed keys (docs/admin-api.md): client keys created through the admin API or
-- `lm-proxy-server keys create`. Only the SHA-256 digest of a key is stored (hex);
-- the key itself is shown once, at creation. `id` is the key's public handle
-- (`key_` + 16 hex digits): it is the ledger's `api_key_id` for the key's
-- requests, so spend is summed by it. Times are Unix milliseconds (UTC).
-- Version 10 leaves 2-9 to the ledger's own migrations.
CREATE TABLE managed_keys (
    id TEXT PRIMARY KEY,
    key_digest TEXT NOT NULL,
    name TEXT NOT NULL,
    group_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    -- The key's budget: one of usd / tokens, and its period (day, week, month,
    -- total); all NULL without a budget.
    budget_usd DOUBLE PRECISION,
    budget_tokens BIGINT,
    budget_period TEXT,
    -- Free-form JSON object given at creation.
    metadata TEXT NOT NULL
);
-- Lookups by digest: a key another replica created, before the next refresh.
CREATE UNIQUE INDEX managed_keys_digest ON managed_keys (key_digest);
