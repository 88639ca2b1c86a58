//! The audit vocabulary (SPEC §8): who acted ([`Actor`]) and what they did ([`Action`]). The log
//! itself — appending in the caller's transaction, the hash chain — is the store's.

use serde::{Serialize, Serializer};

use crate::credential::CredentialType;

/// What kind of party acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// The gateway itself (first start, background tasks).
    System,
    /// Someone at the machine: the CLI, bootstrap.
    Operator,
    User,
    /// An unidentified party (a failed login or client authentication).
    Anonymous,
    OauthClient,
    ServiceAccount,
    /// A credential without a user (a subscription credential, an external token).
    Credential(CredentialType),
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Operator => "operator",
            Self::User => "user",
            Self::Anonymous => "anonymous",
            Self::OauthClient => "oauth_client",
            Self::ServiceAccount => "service_account",
            Self::Credential(t) => t.as_str(),
        }
    }
}

impl Serialize for ActorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Who did it. Built only through its constructors, one per kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Self {
            kind: ActorKind::System,
            id: None,
        }
    }
    pub fn operator() -> Self {
        Self {
            kind: ActorKind::Operator,
            id: None,
        }
    }
    pub fn anonymous() -> Self {
        Self {
            kind: ActorKind::Anonymous,
            id: None,
        }
    }
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::User,
            id: Some(id.into()),
        }
    }
    /// A user when one is known, else anonymous.
    pub fn user_or_anonymous(id: Option<String>) -> Self {
        match id {
            Some(id) => Self::user(id),
            None => Self::anonymous(),
        }
    }
    pub fn oauth_client(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::OauthClient,
            id: Some(id.into()),
        }
    }
    pub fn service_account(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::ServiceAccount,
            id: Some(id.into()),
        }
    }
    pub fn credential(kind: CredentialType, id: Option<String>) -> Self {
        Self {
            kind: ActorKind::Credential(kind),
            id,
        }
    }
}

macro_rules! actions {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// What happened: the `action` of an audit event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action { $($variant),* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $(Action::$variant => $name),* }
            }
        }
    };
}

actions! {
    AlertUsageSpike => "alert.usage_spike",
    ApiKeyCreated => "api_key.created",
    ApiKeyRevoked => "api_key.revoked",
    ApiKeyRotated => "api_key.rotated",
    ApiKeyUpdated => "api_key.updated",
    AuthClientAuthFailed => "auth.client_auth_failed",
    AuthClientCredentials => "auth.client_credentials",
    AuthCodeExchangeFailed => "auth.code_exchange_failed",
    AuthCodeReused => "auth.code_reused",
    AuthConsoleLinkUsed => "auth.console_link_used",
    AuthEmailVerified => "auth.email_verified",
    AuthLogin => "auth.login",
    AuthLoginFailed => "auth.login_failed",
    AuthLogout => "auth.logout",
    AuthPasswordReset => "auth.password_reset",
    AuthPasswordResetRequested => "auth.password_reset_requested",
    AuthPasswordSet => "auth.password_set",
    AuthRefreshFailed => "auth.refresh_failed",
    AuthRefreshTokenReused => "auth.refresh_token_reused",
    AuthSessionCreated => "auth.session_created",
    AuthTokenRefreshed => "auth.token_refreshed",
    AuthTokenRevoked => "auth.token_revoked",
    IdentityProviderCreated => "identity_provider.created",
    IdentityProviderDeleted => "identity_provider.deleted",
    OauthClientCreated => "oauth_client.created",
    OauthClientRevoked => "oauth_client.revoked",
    PlanCreated => "plan.created",
    ProductCreated => "product.created",
    ProductUpdated => "product.updated",
    RoleCreated => "role.created",
    RoleDeleted => "role.deleted",
    RoleUpdated => "role.updated",
    SigningKeyCreated => "signing_key.created",
    SigningKeyRotated => "signing_key.rotated",
    SubscriptionCancelled => "subscription.cancelled",
    SubscriptionCreated => "subscription.created",
    SubscriptionCredentialCreated => "subscription.credential_created",
    SubscriptionCredentialRevoked => "subscription.credential_revoked",
    SubscriptionSuspended => "subscription.suspended",
    SubscriptionUpdated => "subscription.updated",
    TenantCreated => "tenant.created",
    UserAdded => "user.added",
    UserRemoved => "user.removed",
    UserRolesChanged => "user.roles_changed",
    UserSignedUp => "user.signed_up",
    UserUpdated => "user.updated",
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_serialise_as_type_and_id() {
        let a = serde_json::to_value(Actor::user("usr_1")).unwrap();
        assert_eq!(a, serde_json::json!({"type": "user", "id": "usr_1"}));
        let a = serde_json::to_value(Actor::credential(CredentialType::AppJwt, None)).unwrap();
        assert_eq!(a, serde_json::json!({"type": "app_jwt", "id": null}));
        assert_eq!(Actor::user_or_anonymous(None), Actor::anonymous());
    }

    #[test]
    fn action_names_are_distinct_and_dotted() {
        let names: std::collections::HashSet<&str> =
            Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), Action::ALL.len());
        for n in names {
            let (object, verb) = n.split_once('.').unwrap();
            assert!(!object.is_empty() && !verb.is_empty(), "{n}");
        }
    }
}
