//! Products, plans, subscriptions and their credentials (SPEC §1, §2.4, §2.5). Each operation
//! runs in a [`Unit`]: the change, its audit event and, when access is taken away or changes,
//! its invalidation. Everything is tenant-scoped: another tenant's object is `404`.
//!
//! Validation of what a front end received (names, limits, lifetimes, key material) happens
//! before the unit reads anything, so a bad request is refused the same way from every front
//! end and stores nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tollgate_core::apikey::NewKey;
use tollgate_core::audit::Action;
use tollgate_core::permissions::Authority;

use super::Unit;
use crate::auth::middleware::{Caller, within_ceiling};
use crate::auth::{PermSet, Permission};
use crate::crypto::SecretBox;
use crate::error::{ApiError, ApiResult};
use crate::store::invalidations::Kind;
use crate::store::keys::{ApiKeyRecord, KeyRateLimit};
use crate::store::subscriptions::{
    self as store, Credential, Plan, PlanLimits, Product, Status, Subscription,
};
use crate::store::{Conn, StoreError};
use crate::subscriptions::keys::{self as signing, Alg};
use crate::subscriptions::{DEFAULT_MAX_TOKEN_LIFETIME, LARGEST_MAX_TOKEN_LIFETIME};
use crate::util::{new_id, now_ms, random_base62};

fn conflict_as(e: StoreError, msg: &str) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::conflict(msg),
        other => other.into(),
    }
}

/// A subscription of the caller's tenant, or `404`.
pub async fn load(conn: &mut Conn, caller: &Caller, id: &str) -> ApiResult<Subscription> {
    store::get_subscription(conn, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

// ---- products --------------------------------------------------------------------------------

/// A new product as a front end received it.
pub struct NewProduct {
    pub name: String,
    pub description: Option<String>,
    pub models: Vec<String>,
}

/// Validates a new product: a key-style name, a description of at most 2000 characters, at
/// least one model, each configured on this gateway (`configured`), duplicates dropped.
fn validate_product(
    input: NewProduct,
    configured: impl Fn(&str) -> bool,
) -> ApiResult<(String, String, Vec<String>)> {
    let name = super::keys::validate_name(&input.name)?;
    let description = input.description.unwrap_or_default();
    if description.chars().count() > 2000 {
        return Err(ApiError::validation(
            "description",
            "description is at most 2000 characters",
        ));
    }
    if input.models.is_empty() {
        return Err(ApiError::validation(
            "models",
            "a product lists at least one model",
        ));
    }
    let mut models: Vec<String> = Vec::new();
    for m in &input.models {
        if !configured(m) {
            return Err(ApiError::validation(
                "models",
                format!("the model {m:?} is not configured on this gateway"),
            ));
        }
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    Ok((name, description, models))
}

/// Creates a product of the caller's tenant.
pub async fn create_product(
    unit: &mut Unit<'_>,
    caller: &Caller,
    input: NewProduct,
    configured: impl Fn(&str) -> bool,
) -> ApiResult<Product> {
    let (name, description, models) = validate_product(input, configured)?;
    let product = Product {
        id: new_id("prod"),
        tenant_id: caller.tenant_id.to_string(),
        name,
        description,
        models,
        created_at: now_ms(),
    };
    store::insert_product(unit.conn(), &product)
        .await
        .map_err(|e| conflict_as(e, "A product with that name already exists"))?;
    let event = unit
        .event(
            product.tenant_id.clone(),
            caller.actor(),
            Action::ProductCreated,
        )
        .target("product", product.id.clone())
        .details(json!({"name": product.name, "models": product.models}));
    unit.audit(event).await?;
    Ok(product)
}

/// Publishes a product of the caller's tenant to the developer portal, or takes it off.
pub async fn set_product_published(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
    published: bool,
) -> ApiResult<()> {
    let at = published.then(now_ms);
    if !crate::store::console::set_product_published(unit.conn(), &caller.tenant_id, id, at).await?
    {
        return Err(ApiError::not_found("product"));
    }
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::ProductUpdated,
        )
        .target("product", id.to_string())
        .details(json!({"changed": ["published"], "published": published}));
    unit.audit(event).await
}

// ---- plans -----------------------------------------------------------------------------------

/// Every limit a plan sets is positive (an absent limit is no limit).
pub fn validate_limits(l: &PlanLimits) -> ApiResult<()> {
    let all = [
        ("requests_per_minute", l.requests_per_minute),
        ("tokens_per_minute", l.tokens_per_minute),
        ("concurrent_requests", l.concurrent_requests),
        ("requests_per_day", l.requests_per_day),
        ("tokens_per_month", l.tokens_per_month),
    ];
    for (name, v) in all {
        if v == Some(0) {
            return Err(ApiError::validation(
                "limits",
                format!("limits.{name} must be positive (omit it for no limit)"),
            ));
        }
    }
    Ok(())
}

/// A new plan as a front end received it.
pub struct NewPlan {
    pub product_id: String,
    pub name: String,
    pub limits: PlanLimits,
}

/// Creates a plan of one of the tenant's products.
pub async fn create_plan(unit: &mut Unit<'_>, caller: &Caller, input: NewPlan) -> ApiResult<Plan> {
    let name = super::keys::validate_name(&input.name)?;
    validate_limits(&input.limits)?;
    let product = store::get_product(unit.conn(), &caller.tenant_id, &input.product_id)
        .await?
        .ok_or_else(|| ApiError::not_found("product").with_param("product_id"))?;
    let plan = Plan {
        id: new_id("plan"),
        tenant_id: caller.tenant_id.to_string(),
        product_id: product.id.clone(),
        name,
        limits: input.limits,
        created_at: now_ms(),
    };
    store::insert_plan(unit.conn(), &plan)
        .await
        .map_err(|e| conflict_as(e, "This product already has a plan with that name"))?;
    let event = unit
        .event(plan.tenant_id.clone(), caller.actor(), Action::PlanCreated)
        .target("plan", plan.id.clone())
        .details(json!({"name": plan.name, "product_id": plan.product_id, "limits": plan.limits}));
    unit.audit(event).await?;
    Ok(plan)
}

// ---- subscriptions ---------------------------------------------------------------------------

/// A new subscription id: 24 lowercase hex characters (96 random bits).
pub fn new_subscription_id() -> ApiResult<String> {
    let mut b = [0u8; 12];
    crate::crypto::random_bytes(&mut b).map_err(ApiError::internal)?;
    Ok(hex::encode(b))
}

/// The longest lifetime an app JWT of the subscription may have: 1 second to the largest.
pub fn validate_lifetime(v: i64) -> ApiResult<i64> {
    if !(1..=LARGEST_MAX_TOKEN_LIFETIME).contains(&v) {
        return Err(ApiError::validation(
            "max_token_lifetime_seconds",
            format!("max_token_lifetime_seconds must be 1 to {LARGEST_MAX_TOKEN_LIFETIME}"),
        ));
    }
    Ok(v)
}

/// A new subscription as a front end received it.
#[derive(Default)]
pub struct NewSubscription {
    pub plan_id: String,
    /// The subscriber (default: the caller); must be a member of the tenant.
    pub user_id: Option<String>,
    pub max_token_lifetime_seconds: Option<i64>,
    pub single_use_tokens: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
}

/// Subscribes to a plan of the tenant. Returns the subscription and its plan.
pub async fn create_subscription(
    unit: &mut Unit<'_>,
    caller: &Caller,
    input: NewSubscription,
) -> ApiResult<(Subscription, Plan)> {
    let lifetime = validate_lifetime(
        input
            .max_token_lifetime_seconds
            .unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME),
    )?;
    let allowed_origins = crate::cors::validate_origins(input.allowed_origins.unwrap_or_default())?;
    let user_id = match input.user_id {
        Some(u) => {
            crate::store::tenants::get_member(unit.conn(), &caller.tenant_id, &u)
                .await?
                .ok_or_else(|| ApiError::not_found("user").with_param("user_id"))?;
            Some(u)
        }
        None => caller.user_id.as_deref().map(str::to_string),
    };
    let plan = store::get_plan(unit.conn(), &caller.tenant_id, &input.plan_id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan").with_param("plan_id"))?;
    let now = now_ms();
    let sub = Subscription {
        id: new_subscription_id()?,
        tenant_id: caller.tenant_id.to_string(),
        plan_id: plan.id.clone(),
        user_id,
        status: Status::Active,
        max_token_lifetime_seconds: lifetime,
        single_use_tokens: input.single_use_tokens.unwrap_or(false),
        created_at: now,
        updated_at: now,
        cancelled_at: None,
        allowed_origins,
    };
    store::insert_subscription(unit.conn(), &sub).await?;
    let event = unit
        .event(
            sub.tenant_id.clone(),
            caller.actor(),
            Action::SubscriptionCreated,
        )
        .target("subscription", sub.id.clone())
        .details(
            json!({"plan_id": sub.plan_id, "product_id": plan.product_id,
            "user_id": sub.user_id, "max_token_lifetime_seconds": lifetime,
            "single_use_tokens": sub.single_use_tokens,
            "allowed_origins": sub.allowed_origins}),
        );
    unit.audit(event).await?;
    Ok((sub, plan))
}

/// The `error` object stored on operations cancelled because their subscription stopped.
fn inactive_error() -> Value {
    crate::error::ApiError::new(
        crate::error::ErrorCode::SubscriptionInactive,
        "The subscription was cancelled or suspended",
    )
    .body()["error"]
        .clone()
}

/// Changes to a subscription's settings; `None` leaves a setting as it is.
#[derive(Default)]
pub struct SubscriptionChanges {
    /// `active` or `suspended` (cancelling is [`cancel_subscription`]).
    pub status: Option<String>,
    pub max_token_lifetime_seconds: Option<i64>,
    pub single_use_tokens: Option<bool>,
    /// Replaces the list of allowed web origins (`[]` = no browser access).
    pub allowed_origins: Option<Vec<String>>,
}

/// Suspends, reactivates or changes a subscription. Suspending cuts its requests in flight on
/// every instance and cancels its queued operations; other changes re-resolve its credentials'
/// verifications. Returns the subscription as it is now.
pub async fn update_subscription(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
    changes: SubscriptionChanges,
) -> ApiResult<Subscription> {
    let new_status = match changes.status.as_deref() {
        None => None,
        Some("active") => Some(Status::Active),
        Some("suspended") => Some(Status::Suspended),
        Some(_) => {
            return Err(ApiError::validation(
                "status",
                "status must be \"active\" or \"suspended\" (DELETE cancels)",
            ));
        }
    };
    let lifetime = changes
        .max_token_lifetime_seconds
        .map(validate_lifetime)
        .transpose()?;
    let origins = changes
        .allowed_origins
        .map(crate::cors::validate_origins)
        .transpose()?;
    let mut s = load(unit.conn(), caller, id).await?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict("A cancelled subscription cannot change"));
    }
    let mut changed = Vec::new();
    let mut cut = false;
    if let Some(st) = new_status
        && st != s.status
    {
        cut = st == Status::Suspended;
        s.status = st;
        changed.push("status");
    }
    if let Some(l) = lifetime
        && l != s.max_token_lifetime_seconds
    {
        s.max_token_lifetime_seconds = l;
        changed.push("max_token_lifetime_seconds");
    }
    if let Some(b) = changes.single_use_tokens
        && b != s.single_use_tokens
    {
        s.single_use_tokens = b;
        changed.push("single_use_tokens");
    }
    if let Some(o) = origins
        && o != s.allowed_origins
    {
        s.allowed_origins = o;
        changed.push("allowed_origins");
    }
    if changed.is_empty() {
        return Ok(s);
    }
    s.updated_at = now_ms();
    store::update_subscription(unit.conn(), &s).await?;
    if cut {
        store::cancel_queued_operations(unit.conn(), &s.id, &inactive_error(), s.updated_at)
            .await?;
    }
    let action = if cut {
        Action::SubscriptionSuspended
    } else {
        Action::SubscriptionUpdated
    };
    let event = unit
        .event(s.tenant_id.clone(), caller.actor(), action)
        .target("subscription", s.id.clone())
        .details(json!({"changed": changed, "status": s.status.as_str(),
            "allowed_origins": s.allowed_origins}));
    unit.audit(event).await?;
    let kind = if cut {
        Kind::Subject
    } else {
        Kind::Permissions
    };
    unit.invalidate(kind, &s.id).await?;
    Ok(s)
}

/// Cancels a subscription (idempotent): its keys and credentials stop working at once on every
/// instance, in-flight requests included, and its queued operations are cancelled.
pub async fn cancel_subscription(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
) -> ApiResult<Subscription> {
    let mut s = load(unit.conn(), caller, id).await?;
    if s.status == Status::Cancelled {
        return Ok(s);
    }
    let now = now_ms();
    s.status = Status::Cancelled;
    s.cancelled_at = Some(now);
    s.updated_at = now;
    store::update_subscription(unit.conn(), &s).await?;
    let ops = store::cancel_queued_operations(unit.conn(), &s.id, &inactive_error(), now).await?;
    let event = unit
        .event(
            s.tenant_id.clone(),
            caller.actor(),
            Action::SubscriptionCancelled,
        )
        .target("subscription", s.id.clone())
        .details(json!({"plan_id": s.plan_id, "cancelled_operations": ops}));
    unit.audit(event).await?;
    unit.invalidate(Kind::Subject, &s.id).await?;
    Ok(s)
}

// ---- credentials -----------------------------------------------------------------------------

/// A credential's `kid`: 1-64 characters of `A-Z a-z 0-9 - _ . :`.
pub fn validate_kid(kid: &str) -> ApiResult<String> {
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::validation(
            "kid",
            "kid must be 1-64 characters of A-Z a-z 0-9 - _ . :",
        ));
    }
    Ok(kid.to_string())
}

/// A signing credential for app JWTs, as a front end received it.
pub enum NewSigningKey {
    /// An HS256 secret generated by Tollgate (shown once).
    Hs256 { kid: Option<String> },
    /// A public key of the customer's: `alg` is `RS256`, `ES256` or `EdDSA`, `public_key` PEM
    /// text or a JWK (as text).
    Public {
        alg: Option<String>,
        public_key: Option<String>,
        kid: Option<String>,
    },
}

/// Creates a signing credential of a subscription. Returns the credential and, for HS256, the
/// generated secret (to be shown once; only its sealed form is stored).
pub async fn create_signing_credential(
    unit: &mut Unit<'_>,
    secrets: &SecretBox,
    caller: &Caller,
    sub_id: &str,
    input: NewSigningKey,
) -> ApiResult<(Credential, Option<String>)> {
    // A signing credential mints app JWTs, which carry the subscription-key permissions: the
    // caller must hold them all (its effective permissions; no other power is involved).
    within_ceiling(
        Authority::permissions_only(caller.permissions),
        Authority::permissions_only(crate::auth::subscription_key_permissions()),
        "create a signing credential for app JWTs",
        Some("type"),
    )?;
    let cred_id = new_id("cred");
    let (kind, alg, material, format, secret, kid) = match input {
        NewSigningKey::Hs256 { kid } => {
            let secret = signing::generate_hs256_secret().map_err(ApiError::internal)?;
            let sealed = secrets
                .seal(secret.as_bytes(), &cred_id)
                .map_err(ApiError::internal)?;
            (
                "jwt_hs256",
                Alg::Hs256,
                sealed,
                "generated",
                Some(secret),
                kid,
            )
        }
        NewSigningKey::Public {
            alg,
            public_key,
            kid,
        } => {
            let alg = alg
                .as_deref()
                .and_then(Alg::parse)
                .filter(|a| *a != Alg::Hs256)
                .ok_or_else(|| ApiError::validation("alg", "alg must be RS256, ES256 or EdDSA"))?;
            let text = public_key.ok_or_else(|| {
                ApiError::validation("public_key", "public_key (PEM text or a JWK) is required")
            })?;
            let key = signing::parse_public_key(alg, &text)
                .map_err(|msg| ApiError::validation("public_key", msg))?;
            (
                "jwt_public_key",
                alg,
                URL_SAFE_NO_PAD.encode(&key.material),
                key.format,
                None,
                kid.or(key.jwk_kid),
            )
        }
    };
    let kid = match kid {
        Some(k) => validate_kid(&k)?,
        None => random_base62(16),
    };
    let s = load(unit.conn(), caller, sub_id).await?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict(
            "A cancelled subscription cannot get new credentials",
        ));
    }
    let cred = Credential {
        id: cred_id,
        tenant_id: s.tenant_id.clone(),
        subscription_id: s.id.clone(),
        kind: kind.to_string(),
        kid,
        alg: alg.as_str().to_string(),
        key_material: material,
        key_format: format.to_string(),
        created_at: now_ms(),
        created_by: caller.user_id.as_deref().map(str::to_string),
        revoked_at: None,
    };
    store::insert_credential(unit.conn(), &cred)
        .await
        .map_err(|e| {
            conflict_as(
                e,
                "This subscription already has a credential with that kid",
            )
        })?;
    let event = unit
        .event(
            s.tenant_id.clone(),
            caller.actor(),
            Action::SubscriptionCredentialCreated,
        )
        .target("subscription_credential", cred.id.clone())
        .details(
            json!({"subscription_id": s.id, "type": cred.kind, "kid": cred.kid,
            "alg": cred.alg, "key_format": cred.key_format}),
        );
    unit.audit(event).await?;
    // Cached verifications of this subscription must see the new kid.
    unit.invalidate(Kind::Permissions, &s.id).await?;
    Ok((cred, secret))
}

/// Settings of a subscription-bound API key.
pub struct SubscriptionKeySpec {
    pub name: String,
    pub expires_at: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<KeyRateLimit>,
}

/// Creates an API key bound to a subscription of the caller's tenant (its models and limits come
/// from the plan). Needs `subscriptions:write`, and the key never holds a permission the caller
/// lacks (see `super::keys::inherited_scopes`). Returns the key and its plaintext (to be
/// shown once).
pub async fn create_subscription_key(
    unit: &mut Unit<'_>,
    prefix: &str,
    caller: &Caller,
    sub_id: &str,
    spec: SubscriptionKeySpec,
) -> ApiResult<(ApiKeyRecord, NewKey)> {
    caller.require(Permission::SubscriptionsWrite)?;
    let name = super::keys::validate_name(&spec.name)?;
    let expires_at = match spec.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let at = crate::util::parse_rfc3339(s).ok_or_else(|| {
                ApiError::validation("expires_at", "expires_at must be an RFC 3339 time")
            })?;
            if at <= now_ms() {
                return Err(ApiError::validation(
                    "expires_at",
                    "expires_at must be in the future",
                ));
            }
            Some(at)
        }
    };
    let scope_set = spec
        .scopes
        .as_deref()
        .map(super::keys::validate_subscription_scopes)
        .transpose()?;
    if let Some(rl) = &spec.rate_limit
        && (rl.requests_per_minute == Some(0) || rl.tokens_per_minute == Some(0))
    {
        return Err(ApiError::validation(
            "rate_limit",
            "rate limits must be positive",
        ));
    }
    let s = load(unit.conn(), caller, sub_id)
        .await
        .map_err(|e| e.with_param("subscription_id"))?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict(
            "A cancelled subscription cannot get new credentials",
        ));
    }
    // The key never holds more than the caller: explicit scopes must be held by the caller, and
    // without scopes a narrower caller's key inherits the caller's permissions. A subscription
    // key has permissions only, so the caller's effective permissions are the whole ceiling.
    let ceiling = Authority::permissions_only(caller.permissions);
    let base = crate::auth::subscription_key_permissions();
    let sub_key = |p: PermSet| Authority::permissions_only(base.intersect(p));
    let scopes = match (spec.scopes, scope_set) {
        (Some(scopes), Some(set)) => {
            within_ceiling(
                ceiling,
                sub_key(set),
                "create a key with these scopes",
                Some("scopes"),
            )?;
            Some(scopes)
        }
        _ => super::keys::inherited_scopes(ceiling, sub_key(base), sub_key)?,
    };
    let key_spec = super::keys::NewKeySpec {
        tenant_id: s.tenant_id.clone(),
        user_id: None,
        subscription_id: Some(s.id.clone()),
        name,
        expires_at,
        scopes,
        rate_limit: spec.rate_limit,
        created_by: caller.user_id.as_deref().map(str::to_string),
    };
    super::keys::create(unit, prefix, key_spec, caller.actor()).await
}

/// What [`revoke_credential`] revoked.
pub enum RevokedCredential {
    Key(ApiKeyRecord),
    Signing(Credential),
}

/// Revokes one credential of a subscription (idempotent): a signing credential (`cred_…`) or a
/// bound API key (`key_…`). Requests in flight with it are cut.
pub async fn revoke_credential(
    unit: &mut Unit<'_>,
    caller: &Caller,
    sub_id: &str,
    cred_id: &str,
) -> ApiResult<RevokedCredential> {
    let s = load(unit.conn(), caller, sub_id).await?;
    if let Some(key) = crate::store::keys::get(unit.conn(), &s.tenant_id, cred_id).await?
        && key.subscription_id.as_deref() == Some(s.id.as_str())
    {
        let (rec, _) = super::keys::revoke(unit, &s.tenant_id, cred_id, caller.actor()).await?;
        return Ok(RevokedCredential::Key(rec));
    }
    let Some(_) = store::get_credential(unit.conn(), &s.tenant_id, &s.id, cred_id).await? else {
        return Err(ApiError::not_found("credential"));
    };
    let changed = store::revoke_credential(unit.conn(), &s.tenant_id, cred_id, now_ms()).await?;
    if changed {
        let event = unit
            .event(
                s.tenant_id.clone(),
                caller.actor(),
                Action::SubscriptionCredentialRevoked,
            )
            .target("subscription_credential", cred_id.to_string())
            .details(json!({"subscription_id": s.id}));
        unit.audit(event).await?;
        unit.invalidate(Kind::Credential, cred_id).await?;
    }
    let cred = store::get_credential(unit.conn(), &s.tenant_id, &s.id, cred_id)
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    Ok(RevokedCredential::Signing(cred))
}
