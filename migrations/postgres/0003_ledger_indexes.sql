-- Fewer indexes on the ledger (docs/usage-ledger.md): each index entry is a B-tree
-- insert per row, and together they were most of the writer's cost.
-- `group_name`: no query reads by group alone; budgets and `/admin/usage` read a
-- time range, which `usage_ledger_created_at` serves.
DROP INDEX usage_ledger_group;
-- `api_key_id`: only managed keys are looked up by key (their spend in
-- `GET /admin/keys`); rows of keys written in the config need no entry.
DROP INDEX usage_ledger_key;
CREATE INDEX usage_ledger_managed_key ON usage_ledger (api_key_id, created_at)
    WHERE substr(api_key_id, 1, 4) = 'key_';
-- `request_id` stays unique (a batch retried after a lost answer adds no row
-- twice), compared as bytes: the database's collation made each insert into this
-- index call strcoll along the way down the tree. Rebuilding it reads the table
-- once.
DROP INDEX usage_ledger_request_id;
CREATE UNIQUE INDEX usage_ledger_request_id ON usage_ledger (request_id COLLATE "C");
