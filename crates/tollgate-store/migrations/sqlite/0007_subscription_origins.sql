-- The web origins (scheme://host[:port]) whose pages may use a subscription's app JWTs and id
-- from a browser (CORS). A JSON array of strings on the subscription; empty = no browser access.
ALTER TABLE subscriptions ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';
-- The same, one row per origin, written with the subscription in one transaction: a preflight
-- (which carries no credential) asks whether any active subscription allows its origin.
CREATE TABLE subscription_origins (
    origin TEXT NOT NULL,
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id),
    PRIMARY KEY (origin, subscription_id)
);
