//! The kinds of credential a request can carry (SPEC §2).

/// Which verifier vouched for a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    ApiKey,
    PlatformJwt,
    ExternalJwt,
    AppJwt,
    SubscriptionId,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::PlatformJwt => "platform_jwt",
            Self::ExternalJwt => "external_jwt",
            Self::AppJwt => "app_jwt",
            Self::SubscriptionId => "subscription_id",
        }
    }
}
