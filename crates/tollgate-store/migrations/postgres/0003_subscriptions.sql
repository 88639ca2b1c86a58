-- Products, plans, subscriptions, app-JWT signing credentials, the single-use jti cache and
-- asynchronous operations (SPEC §2.4, §2.5, §4.1, §4.2).
CREATE TABLE products (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    models TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    product_id TEXT NOT NULL REFERENCES products(id),
    name TEXT NOT NULL,
    limits TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, name)
);
CREATE INDEX plans_tenant ON plans(tenant_id, created_at);

-- id: 24 lowercase hex characters, public (the x-user-id value and the iss of app JWTs).
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    plan_id TEXT NOT NULL REFERENCES plans(id),
    user_id TEXT,
    status TEXT NOT NULL,
    max_token_lifetime_seconds BIGINT NOT NULL,
    single_use_tokens BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    cancelled_at BIGINT
);
CREATE INDEX subscriptions_tenant ON subscriptions(tenant_id, created_at);

-- App-JWT verification keys. key_material: for HS256 the secret sealed with AES-256-GCM, else the
-- normalised public key (base64url DER / point / raw Ed25519 key).
CREATE TABLE subscription_credentials (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id),
    kind TEXT NOT NULL,
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    key_material TEXT NOT NULL,
    key_format TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    revoked_at BIGINT,
    UNIQUE (subscription_id, kid)
);

-- Single-use app-JWT ids, shared by every instance; rows are pruned once the token has expired.
CREATE TABLE jwt_replay (
    subscription_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, jti)
);
CREATE INDEX jwt_replay_expires ON jwt_replay(expires_at);

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    subscription_id TEXT,
    user_id TEXT,
    credential_type TEXT NOT NULL,
    credential_id TEXT,
    end_user TEXT,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX operations_status ON operations(status, created_at);
CREATE INDEX operations_subscription ON operations(subscription_id, status);
CREATE INDEX operations_finished ON operations(finished_at);
