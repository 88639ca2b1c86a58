//! The wire form of the store's records: the JSON each management route answers with. The
//! store returns records; what a client sees of them is decided here, once per record type
//! (secrets and hashes are never part of it).

use serde_json::{Value, json};

use crate::store::{audit, identity, keys, subscriptions, tenants};
use crate::util::{opt_rfc3339, rfc3339};

/// A record's API representation.
pub trait ToApi {
    fn to_api(&self) -> Value;
}

/// A record's API representation, with the display names of the roles it refers to.
pub trait ToApiWithRoles {
    fn to_api(&self, role_names: &[String]) -> Value;
}

impl ToApi for audit::AuditRecord {
    /// The API representation (RFC 3339 time).
    fn to_api(&self) -> Value {
        json!({
            "id": self.id, "object": "audit_event", "seq": self.seq,
            "ts": rfc3339(self.ts), "tenant_id": self.tenant_id, "actor": self.actor,
            "action": self.action, "target": self.target, "ip": self.ip,
            "user_agent": self.user_agent, "request_id": self.request_id, "outcome": self.outcome,
            "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash,
        })
    }
}

impl ToApiWithRoles for identity::OAuthClient {
    /// The API shape (`role_names`: display names of `roles`). Never contains the secret.
    fn to_api(&self, role_names: &[String]) -> Value {
        json!({
            "id": self.id, "client_id": self.id, "object": "oauth_client", "name": self.name,
            "redirect_uris": self.redirect_uris, "confidential": self.confidential,
            "roles": role_names, "created_at": rfc3339(self.created_at),
            "revoked_at": self.revoked_at.map(rfc3339),
        })
    }
}

impl ToApi for identity::ExternalIssuer {
    fn to_api(&self) -> Value {
        json!({
            "id": self.id, "object": "identity_provider", "issuer": self.issuer,
            "jwks_url": self.jwks_url, "audience": self.audience, "claim": self.claim,
            "default_role": self.default_role, "max_permissions": self.max_permissions,
            "created_at": rfc3339(self.created_at),
        })
    }
}

impl ToApi for keys::ApiKeyRecord {
    /// The API representation: never contains the key itself.
    fn to_api(&self) -> Value {
        json!({
            "id": self.id, "object": "api_key", "name": self.name, "hint": self.hint,
            "tenant_id": self.tenant_id, "user_id": self.user_id,
            "subscription_id": self.subscription_id, "scopes": self.scopes,
            "rate_limit": self.rate_limit, "expires_at": opt_rfc3339(self.expires_at),
            "created_at": rfc3339(self.created_at), "created_by": self.created_by,
            "last_used_at": opt_rfc3339(self.last_used_at), "revoked_at": opt_rfc3339(self.revoked_at),
            "previous_key_valid_until": opt_rfc3339(self.prev_valid_until),
        })
    }
}

impl ToApi for subscriptions::Product {
    fn to_api(&self) -> Value {
        json!({"id": self.id, "object": "product", "tenant_id": self.tenant_id, "name": self.name,
            "description": self.description, "models": self.models,
            "created_at": rfc3339(self.created_at)})
    }
}

impl ToApi for subscriptions::Plan {
    fn to_api(&self) -> Value {
        json!({"id": self.id, "object": "plan", "tenant_id": self.tenant_id,
            "product_id": self.product_id, "name": self.name, "limits": self.limits,
            "created_at": rfc3339(self.created_at)})
    }
}

impl ToApi for subscriptions::Subscription {
    fn to_api(&self) -> Value {
        json!({"id": self.id, "object": "subscription", "tenant_id": self.tenant_id,
            "plan_id": self.plan_id, "user_id": self.user_id, "status": self.status.as_str(),
            "max_token_lifetime_seconds": self.max_token_lifetime_seconds,
            "single_use_tokens": self.single_use_tokens,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
            "cancelled_at": opt_rfc3339(self.cancelled_at),
            "allowed_origins": self.allowed_origins})
    }
}

impl ToApi for subscriptions::Credential {
    fn to_api(&self) -> Value {
        json!({"id": self.id, "object": "subscription_credential", "type": self.kind,
            "subscription_id": self.subscription_id, "kid": self.kid, "alg": self.alg,
            "key_format": self.key_format, "created_at": rfc3339(self.created_at),
            "revoked_at": opt_rfc3339(self.revoked_at)})
    }
}

impl ToApi for subscriptions::Operation {
    /// The API representation (`GET /v1/operations/{id}`).
    fn to_api(&self) -> Value {
        let mut v = json!({"id": self.id, "object": "operation", "kind": self.kind,
            "status": self.status.as_str(), "model": self.model,
            "subscription_id": self.subscription_id,
            "created_at": rfc3339(self.created_at), "started_at": opt_rfc3339(self.started_at),
            "finished_at": opt_rfc3339(self.finished_at)});
        if let Some(r) = &self.result {
            v["result"] = r.clone();
        }
        if let Some(e) = &self.error {
            v["error"] = e.clone();
        }
        v
    }
}

impl ToApi for tenants::Tenant {
    fn to_api(&self) -> Value {
        json!({"id": self.id, "object": "tenant", "name": self.name, "created_at": rfc3339(self.created_at)})
    }
}

impl ToApiWithRoles for tenants::Member {
    fn to_api(&self, role_names: &[String]) -> Value {
        json!({
            "id": self.user.id, "object": "user", "email": self.user.email, "name": self.user.name,
            "roles": role_names, "email_verified": self.user.email_verified_at.is_some(),
            "created_at": rfc3339(self.user.created_at), "joined_at": rfc3339(self.joined_at),
        })
    }
}

impl ToApi for tenants::Role {
    fn to_api(&self) -> Value {
        json!({
            "id": self.id, "object": "role", "name": self.name, "description": self.description,
            "permissions": self.permissions, "builtin": false, "created_at": rfc3339(self.created_at),
        })
    }
}
