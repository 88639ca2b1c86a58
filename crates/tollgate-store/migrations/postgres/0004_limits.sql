-- Usage metering (one row per inference request) and its per-minute aggregates, which serve
-- GET /v1/usage and seed quota counters. Absent dimensions are '' in the aggregates so they can
-- be part of the primary key. usage_records is an append-only log in seq order with no secondary
-- index on purpose (an index on (tenant_id, ts) doubled the cost of metering a request); every
-- query goes to usage_minute.
CREATE TABLE usage_records (
    seq BIGSERIAL PRIMARY KEY,
    ts BIGINT NOT NULL,
    request_id TEXT,
    tenant_id TEXT NOT NULL,
    api_key_id TEXT,
    user_id TEXT,
    subscription_id TEXT,
    end_user TEXT,
    model TEXT NOT NULL,
    route TEXT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL
);

CREATE TABLE usage_minute (
    tenant_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
    api_key_id TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    subscription_id TEXT NOT NULL DEFAULT '',
    end_user TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_ms_sum BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, minute, api_key_id, user_id, subscription_id, end_user, model)
);
CREATE INDEX usage_minute_key ON usage_minute(tenant_id, api_key_id, minute);
CREATE INDEX usage_minute_user ON usage_minute(tenant_id, user_id, minute);
CREATE INDEX usage_minute_sub ON usage_minute(tenant_id, subscription_id, minute);
