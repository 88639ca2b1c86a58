-- Identity (issue 3): signing keys, OAuth clients, authorization codes, refresh-token families,
-- revoked access tokens, email tokens, sign-ups awaiting verification, external identity providers.

-- Platform JWT signing keys. The private key is AES-256-GCM encrypted (never stored in plaintext);
-- the public key is a JWK. `retired_at`: no longer signs; stays in the JWKS until `expires_at`.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_enc TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    expires_at BIGINT
);

-- OAuth clients registered per tenant. Confidential clients are service accounts with roles.
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    confidential BIGINT NOT NULL,
    secret_hash TEXT,
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    revoked_at BIGINT
);
CREATE INDEX oauth_clients_tenant ON oauth_clients(tenant_id, created_at);

-- Authorization codes (hash only), single use, 60 s.
CREATE TABLE oauth_codes (
    code_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    family_id TEXT
);
CREATE INDEX oauth_codes_expires ON oauth_codes(expires_at);

-- A login session: the family of rotated refresh tokens (access tokens carry its id as `sid`).
CREATE TABLE token_families (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT
);
CREATE INDEX token_families_user ON token_families(user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES token_families(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

-- Access tokens revoked one by one (RFC 7009 on a token without a family), until they expire.
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Emailed one-time tokens (hash only): purpose 'verify_email' or 'password_reset'.
CREATE TABLE email_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX email_tokens_user ON email_tokens(user_id, purpose);

-- Users who signed up and have not verified their email yet (they cannot log in).
CREATE TABLE signup_pending (
    user_id TEXT PRIMARY KEY REFERENCES users(id),
    created_at BIGINT NOT NULL
);

-- External identity providers a tenant trusts (SPEC §2.3).
CREATE TABLE external_issuers (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    issuer TEXT NOT NULL,
    jwks_url TEXT NOT NULL,
    audience TEXT NOT NULL,
    claim TEXT NOT NULL,
    default_role TEXT,
    -- The registering admin's permissions: an external token never gets more (no escalation).
    max_permissions TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (issuer, audience)
);
