-- Web console sessions. The session id lives only in the browser's cookie; the store keeps its
-- SHA-256. `tokens` (the access and refresh tokens of the session's OAuth login) and `flash` (a
-- one-shot message, e.g. a secret shown once after a redirect) are sealed with a key derived from
-- the session id itself, so a copy of the store alone opens neither.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL,
    family_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    tokens TEXT NOT NULL,
    access_expires_at BIGINT NOT NULL,
    flash TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_family ON console_sessions(family_id);
CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
-- When a product was published to the developer portal (NULL = not published).
ALTER TABLE products ADD COLUMN published_at BIGINT;
