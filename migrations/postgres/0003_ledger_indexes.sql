-- Fewer indexes on the ledger (docs/usage-ledger.md): each index entry is a B-tree
-- insert per row, and together they were most of the database's work per row.
-- `group_name`: no query reads by group alone; budgets and `/admin/usage` read a
-- time range, which `usage_ledger_created_at` serves.
DROP INDEX usage_ledger_group;
-- `api_key_id`: only managed keys are looked up by key (their spend in
-- `GET /admin/keys`); rows of keys written in the config need no entry.
DROP INDEX usage_ledger_key;
CREATE INDEX usage_ledger_managed_key ON usage_ledger (api_key_id, created_at)
    WHERE substr(api_key_id, 1, 4) = 'key_';
-- `request_id` was unique so that a batch written again after a lost answer added
-- no row twice; a random id's entry was the costliest part of a row. A batch now
-- carries an id of its own, added here in the statement that writes its rows
-- (which are written only when the id is new), so one entry per batch does it.
DROP INDEX usage_ledger_request_id;
CREATE TABLE ledger_batches (
    -- Unix ms (13 digits) of the batch's first write, '-', 16 random hex digits:
    -- ids sort by time, so the old ones (kept for hours) are deleted by range.
    id TEXT COLLATE "C" PRIMARY KEY
);
