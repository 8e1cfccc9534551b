-- Spend per group and managed key (`key:<id>`) per period (docs/usage-ledger.md):
-- the writer adds each batch's spend in the batch's transaction, and a gateway
-- starting reads its budgets' spend to date here rather than summing the ledger
-- (a month of rows took seconds to sum while requests waited on the budgets).
-- The same table as PostgreSQL's (migrations/postgres/0002_budget_usage.sql).
CREATE TABLE budget_usage (
    group_name TEXT NOT NULL,
    period TEXT NOT NULL,
    -- Unix ms (UTC) of the period's start: days, weeks from Monday, months; 0 for
    -- 'total' (budget::Period::bounds).
    period_start BIGINT NOT NULL,
    usd DOUBLE PRECISION NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (group_name, period, period_start)
) WITHOUT ROWID;

-- The rows written before this migration, with the same period starts as
-- budget::Period::bounds (1970-01-01 was a Thursday).
INSERT INTO budget_usage (group_name, period, period_start, usd, tokens)
SELECT name, period, CASE period
        WHEN 'day' THEN (created_at / 86400000) * 86400000
        WHEN 'week' THEN ((created_at / 86400000) - ((created_at / 86400000) + 3) % 7) * 86400000
        WHEN 'month' THEN CAST(strftime('%s', created_at / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000
        ELSE 0
    END, SUM(cost_usd), SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))
FROM (
    SELECT group_name AS name, created_at, cost_usd, prompt_tokens, completion_tokens
    FROM usage_ledger WHERE group_name IS NOT NULL
    UNION ALL
    SELECT 'key:' || api_key_id, created_at, cost_usd, prompt_tokens, completion_tokens
    FROM usage_ledger WHERE substr(api_key_id, 1, 4) = 'key_'
) CROSS JOIN (SELECT 'day' AS period UNION ALL SELECT 'week' UNION ALL SELECT 'month'
    UNION ALL SELECT 'total')
GROUP BY 1, 2, 3;
