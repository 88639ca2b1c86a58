-- Quota counters shared by every instance when there is no Redis (or while it is unreachable).
-- `used` counts the units of a scope's quota period that instances have leased: an instance takes
-- a lease (a slice of what is left) in one conditional UPDATE, spends it locally, and gives back
-- what it did not spend, so the sum of leases never exceeds the limit. `last_grant` is the size
-- of the last lease, returned by the same UPDATE.
CREATE TABLE quota_counters (
    scope TEXT NOT NULL,
    dim TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    used BIGINT NOT NULL,
    last_grant BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, dim, period_start)
);
