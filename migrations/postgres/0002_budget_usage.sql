-- Group spend per period, shared by the replicas of one database (docs/usage-ledger.md).
-- Each replica adds the rows it inserts in the same statement (a data-modifying
-- CTE over the rows actually inserted, so a batch written twice adds nothing
-- twice) and reads the figures of the current periods back about once a second.

-- The start of the period holding `at_ms` (Unix ms, UTC): days, weeks from Monday,
-- months; 0 for 'total'.
CREATE FUNCTION lm_proxy_period_start(period TEXT, at_ms BIGINT) RETURNS BIGINT
LANGUAGE SQL IMMUTABLE AS $$
SELECT CASE period
    WHEN 'day' THEN (at_ms / 86400000) * 86400000
    -- 1970-01-01 was a Thursday.
    WHEN 'week' THEN ((at_ms / 86400000) - ((at_ms / 86400000) + 3) % 7) * 86400000
    WHEN 'month' THEN
        (EXTRACT(EPOCH FROM date_trunc('month', to_timestamp(at_ms / 1000.0) AT TIME ZONE 'UTC')) * 1000)::BIGINT
    ELSE 0
END
$$;

CREATE TABLE budget_usage (
    group_name TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    usd DOUBLE PRECISION NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (group_name, period, period_start)
);

-- The rows written before this migration.
INSERT INTO budget_usage (group_name, period, period_start, usd, tokens)
SELECT group_name, p.period, lm_proxy_period_start(p.period, created_at), SUM(cost_usd),
       SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))
FROM usage_ledger CROSS JOIN (VALUES ('day'), ('week'), ('month'), ('total')) AS p (period)
WHERE group_name IS NOT NULL
GROUP BY 1, 2, 3;
