//! Identity tables (SPEC §2.2, §2.3, §4.3): signing keys, OAuth clients, authorization codes,
//! refresh-token families, revoked access tokens, emailed tokens, pending sign-ups, external
//! issuers. Secrets are stored only as SHA-256 hashes (codes, refresh tokens, client secrets,
//! email tokens) or encrypted (signing keys).

use serde_json::json;
use sqlx::{AnyPool, Row};

use crate::util::now_ms;
use crate::{Conn, StoreError, StoreResult};

// ---- signing keys ----------------------------------------------------------------------------

/// A stored signing key. `private_enc` is ciphertext; it never leaves the identity module.
#[derive(Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    pub public_jwk: String,
    pub private_enc: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn signing_key_row(r: &sqlx::any::AnyRow) -> Result<SigningKeyRow, sqlx::Error> {
    Ok(SigningKeyRow {
        kid: r.try_get("kid")?,
        alg: r.try_get("alg")?,
        public_jwk: r.try_get("public_jwk")?,
        private_enc: r.try_get("private_enc")?,
        created_at: r.try_get("created_at")?,
        retired_at: r.try_get("retired_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Keys still published in the JWKS (not past `expires_at`), newest first.
pub async fn live_signing_keys(pool: &AnyPool, now: i64) -> StoreResult<Vec<SigningKeyRow>> {
    let rows = sqlx::query(
        "SELECT kid, alg, public_jwk, private_enc, created_at, retired_at, expires_at
         FROM signing_keys WHERE expires_at IS NULL OR expires_at > $1
         ORDER BY created_at DESC, kid",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(signing_key_row).collect::<Result<_, _>>()?)
}

/// The key currently used for signing, if any.
pub async fn current_signing_key(conn: &mut Conn) -> StoreResult<Option<SigningKeyRow>> {
    let r = sqlx::query(
        "SELECT kid, alg, public_jwk, private_enc, created_at, retired_at, expires_at
         FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(r.as_ref().map(signing_key_row).transpose()?)
}

pub async fn insert_signing_key(conn: &mut Conn, k: &SigningKeyRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, public_jwk, private_enc, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(k.kid.clone())
    .bind(k.alg.clone())
    .bind(k.public_jwk.clone())
    .bind(k.private_enc.clone())
    .bind(k.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retires every signing key but `keep`: they stop signing now and leave the JWKS at `expires_at`
/// (after the longest-lived token they signed has expired). Returns the retired kids.
pub async fn retire_signing_keys(
    conn: &mut Conn,
    keep: &str,
    now: i64,
    expires_at: i64,
) -> StoreResult<Vec<String>> {
    let kids: Vec<(String,)> =
        sqlx::query_as("SELECT kid FROM signing_keys WHERE retired_at IS NULL AND kid <> $1")
            .bind(keep.to_string())
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query(
        "UPDATE signing_keys SET retired_at = $2, expires_at = $3 WHERE retired_at IS NULL AND kid <> $1",
    )
    .bind(keep.to_string())
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(kids.into_iter().map(|k| k.0).collect())
}

/// Sets the JWKS expiry of every retired key but `keep` (operators shortening an overlap; tests).
pub async fn expire_retired_signing_keys(
    conn: &mut Conn,
    keep: &str,
    expires_at: i64,
) -> StoreResult<u64> {
    let r = sqlx::query(
        "UPDATE signing_keys SET expires_at = $2 WHERE retired_at IS NOT NULL AND kid <> $1",
    )
    .bind(keep.to_string())
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

// ---- OAuth clients ---------------------------------------------------------------------------

/// A registered OAuth client. `secret_hash` (SHA-256 hex) is never returned by the API.
#[derive(Clone)]
pub struct OAuthClient {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub confidential: bool,
    pub secret_hash: Option<String>,
    /// Role ids (built-in names or custom role ids) of the service account.
    pub roles: Vec<String>,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("confidential", &self.confidential)
            .finish_non_exhaustive()
    }
}

const CLIENT_COLS: &str = "id, tenant_id, name, redirect_uris, confidential, secret_hash, roles, created_at, created_by, revoked_at";

fn client_row(r: &sqlx::any::AnyRow) -> Result<OAuthClient, sqlx::Error> {
    Ok(OAuthClient {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        redirect_uris: crate::json_col(r.try_get("redirect_uris")?).unwrap_or_default(),
        confidential: r.try_get::<i64, _>("confidential")? != 0,
        secret_hash: r.try_get("secret_hash")?,
        roles: crate::json_col(r.try_get("roles")?).unwrap_or_default(),
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub async fn insert_client(conn: &mut Conn, c: &OAuthClient) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO oauth_clients (id, tenant_id, name, redirect_uris, confidential, secret_hash, roles, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.id.clone())
    .bind(c.tenant_id.clone())
    .bind(c.name.clone())
    .bind(json!(c.redirect_uris).to_string())
    .bind(i64::from(c.confidential))
    .bind(c.secret_hash.clone())
    .bind(json!(c.roles).to_string())
    .bind(c.created_at)
    .bind(c.created_by.clone())
    .execute(conn)
    .await?;
    Ok(())
}

/// A client by id, in any tenant (the token endpoint learns the tenant from the client). Takes
/// the pool or a connection (inside a transaction, so no second connection is needed).
pub async fn find_client<'e, E>(ex: E, id: &str) -> StoreResult<Option<OAuthClient>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {CLIENT_COLS} FROM oauth_clients WHERE id = $1");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?;
    Ok(r.as_ref().map(client_row).transpose()?)
}

/// A client of one tenant (management API).
pub async fn get_client(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
) -> StoreResult<Option<OAuthClient>> {
    let sql = format!("SELECT {CLIENT_COLS} FROM oauth_clients WHERE tenant_id = $1 AND id = $2");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.as_ref().map(client_row).transpose()?)
}

pub async fn list_clients(pool: &AnyPool, tenant_id: &str) -> StoreResult<Vec<OAuthClient>> {
    let sql = format!(
        "SELECT {CLIENT_COLS} FROM oauth_clients WHERE tenant_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(client_row).collect::<Result<_, _>>()?)
}

/// Revokes a client (idempotent); returns whether this call revoked it.
pub async fn revoke_client(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
    at: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE oauth_clients SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

// ---- authorization codes ---------------------------------------------------------------------

#[derive(Clone)]
pub struct AuthCode {
    pub code_hash: String,
    pub tenant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub family_id: Option<String>,
}

impl std::fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCode")
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

pub async fn insert_code(conn: &mut Conn, c: &AuthCode) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO oauth_codes (code_hash, tenant_id, client_id, user_id, redirect_uri, code_challenge, scope, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.code_hash.clone())
    .bind(c.tenant_id.clone())
    .bind(c.client_id.clone())
    .bind(c.user_id.clone())
    .bind(c.redirect_uri.clone())
    .bind(c.code_challenge.clone())
    .bind(c.scope.clone())
    .bind(c.created_at)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_code(conn: &mut Conn, code_hash: &str) -> StoreResult<Option<AuthCode>> {
    let r = sqlx::query(
        "SELECT code_hash, tenant_id, client_id, user_id, redirect_uri, code_challenge, scope, created_at, expires_at, used_at, family_id
         FROM oauth_codes WHERE code_hash = $1",
    )
    .bind(code_hash.to_string())
    .fetch_optional(conn)
    .await?;
    let Some(r) = r else { return Ok(None) };
    Ok(Some(AuthCode {
        code_hash: r.try_get("code_hash")?,
        tenant_id: r.try_get("tenant_id")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        redirect_uri: r.try_get("redirect_uri")?,
        code_challenge: r.try_get("code_challenge")?,
        scope: r.try_get("scope")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
        family_id: r.try_get("family_id")?,
    }))
}

/// Marks a code used; `false` when it was already used (a concurrent or replayed exchange).
pub async fn spend_code(conn: &mut Conn, code_hash: &str, at: i64) -> StoreResult<bool> {
    let r =
        sqlx::query("UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL")
            .bind(code_hash.to_string())
            .bind(at)
            .execute(conn)
            .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_code_family(conn: &mut Conn, code_hash: &str, family_id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE oauth_codes SET family_id = $2 WHERE code_hash = $1")
        .bind(code_hash.to_string())
        .bind(family_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---- token families and refresh tokens --------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Family {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

fn family_row(r: &sqlx::any::AnyRow) -> Result<Family, sqlx::Error> {
    Ok(Family {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        client_id: r.try_get("client_id")?,
        scope: r.try_get("scope")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub async fn insert_family(conn: &mut Conn, f: &Family) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO token_families (id, tenant_id, user_id, client_id, scope, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(f.id.clone())
    .bind(f.tenant_id.clone())
    .bind(f.user_id.clone())
    .bind(f.client_id.clone())
    .bind(f.scope.clone())
    .bind(f.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A family by id; takes the pool or a connection.
pub async fn get_family<'e, E>(ex: E, id: &str) -> StoreResult<Option<Family>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let r = sqlx::query(
        "SELECT id, tenant_id, user_id, client_id, scope, created_at, revoked_at FROM token_families WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?;
    Ok(r.as_ref().map(family_row).transpose()?)
}

/// Revokes a family (idempotent); returns whether this call revoked it.
pub async fn revoke_family(conn: &mut Conn, id: &str, reason: &str, at: i64) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE token_families SET revoked_at = $2, revoke_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.to_string())
    .bind(at)
    .bind(reason.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Revokes every live family of a user (password reset). Returns the revoked family ids.
pub async fn revoke_user_families(
    conn: &mut Conn,
    user_id: &str,
    reason: &str,
    at: i64,
) -> StoreResult<Vec<(String, String)>> {
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, tenant_id FROM token_families WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE token_families SET revoked_at = $2, revoke_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id.to_string())
    .bind(at)
    .bind(reason.to_string())
    .execute(conn)
    .await?;
    Ok(ids)
}

#[derive(Debug, Clone)]
pub struct RefreshToken {
    pub token_hash: String,
    pub family_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub async fn insert_refresh(conn: &mut Conn, t: &RefreshToken) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(t.token_hash.clone())
    .bind(t.family_id.clone())
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refresh token with its family.
pub async fn find_refresh(
    conn: &mut Conn,
    token_hash: &str,
) -> StoreResult<Option<(RefreshToken, Family)>> {
    let r = sqlx::query(
        "SELECT r.token_hash, r.family_id, r.created_at AS r_created, r.expires_at, r.used_at,
                f.id, f.tenant_id, f.user_id, f.client_id, f.scope, f.created_at, f.revoked_at
         FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id WHERE r.token_hash = $1",
    )
    .bind(token_hash.to_string())
    .fetch_optional(conn)
    .await?;
    let Some(r) = r else { return Ok(None) };
    Ok(Some((
        RefreshToken {
            token_hash: r.try_get("token_hash")?,
            family_id: r.try_get("family_id")?,
            created_at: r.try_get("r_created")?,
            expires_at: r.try_get("expires_at")?,
            used_at: r.try_get("used_at")?,
        },
        family_row(&r)?,
    )))
}

/// Spends a refresh token; `false` when it was already spent (reuse).
pub async fn spend_refresh(conn: &mut Conn, token_hash: &str, at: i64) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
    )
    .bind(token_hash.to_string())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

// ---- revoked access tokens -------------------------------------------------------------------

pub async fn revoke_jti(conn: &mut Conn, jti: &str, expires_at: i64) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti.to_string())
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn is_jti_revoked(pool: &AnyPool, jti: &str) -> StoreResult<bool> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM revoked_tokens WHERE jti = $1")
        .bind(jti.to_string())
        .fetch_optional(pool)
        .await?;
    Ok(r.is_some())
}

/// Deletes expired codes, email tokens and revoked-jti rows (housekeeping).
pub async fn prune_expired(pool: &AnyPool, now: i64) -> StoreResult<()> {
    for sql in [
        "DELETE FROM oauth_codes WHERE expires_at < $1",
        "DELETE FROM revoked_tokens WHERE expires_at < $1",
        "DELETE FROM email_tokens WHERE expires_at < $1",
    ] {
        sqlx::query(sql).bind(now - 3_600_000).execute(pool).await?;
    }
    Ok(())
}

// ---- email tokens and pending sign-ups --------------------------------------------------------

pub async fn insert_email_token(
    conn: &mut Conn,
    token_hash: &str,
    user_id: &str,
    purpose: &str,
    expires_at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash.to_string())
    .bind(user_id.to_string())
    .bind(purpose.to_string())
    .bind(now_ms())
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Spends an unexpired, unused email token of `purpose`; returns its user id.
pub async fn spend_email_token(
    conn: &mut Conn,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> StoreResult<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT user_id FROM email_tokens WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(token_hash.to_string())
    .bind(purpose.to_string())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((user_id,)) = row else {
        return Ok(None);
    };
    let r = sqlx::query(
        "UPDATE email_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
    )
    .bind(token_hash.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok((r.rows_affected() == 1).then_some(user_id))
}

pub async fn mark_signup_pending(conn: &mut Conn, user_id: &str) -> StoreResult<()> {
    sqlx::query("INSERT INTO signup_pending (user_id, created_at) VALUES ($1, $2)")
        .bind(user_id.to_string())
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn is_signup_pending(conn: &mut Conn, user_id: &str) -> StoreResult<bool> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM signup_pending WHERE user_id = $1")
        .bind(user_id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.is_some())
}

/// Marks the email verified and clears the pending sign-up. Returns whether it was unverified.
pub async fn mark_email_verified(conn: &mut Conn, user_id: &str, at: i64) -> StoreResult<bool> {
    sqlx::query("DELETE FROM signup_pending WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    let r = sqlx::query(
        "UPDATE users SET email_verified_at = $2 WHERE id = $1 AND email_verified_at IS NULL",
    )
    .bind(user_id.to_string())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Tenant ids of a user's memberships (audit chains for tenant-less security events).
pub async fn user_tenant_ids(conn: &mut Conn, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT tenant_id FROM memberships WHERE user_id = $1 ORDER BY created_at, tenant_id",
    )
    .bind(user_id.to_string())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

// ---- external issuers ------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    pub id: String,
    pub tenant_id: String,
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    /// The claim naming the user: `email` (matched to a member's email) or `sub`.
    pub claim: String,
    pub default_role: Option<String>,
    /// Ceiling on what its tokens may do: the registering admin's permissions.
    pub max_permissions: tollgate_core::permissions::PermSet,
    pub created_at: i64,
}

const ISSUER_COLS: &str =
    "id, tenant_id, issuer, jwks_url, audience, claim, default_role, max_permissions, created_at";

fn issuer_row(r: &sqlx::any::AnyRow) -> Result<ExternalIssuer, sqlx::Error> {
    Ok(ExternalIssuer {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        issuer: r.try_get("issuer")?,
        jwks_url: r.try_get("jwks_url")?,
        audience: r.try_get("audience")?,
        claim: r.try_get("claim")?,
        default_role: r.try_get("default_role")?,
        max_permissions: {
            let names: Vec<String> =
                crate::json_col(r.try_get("max_permissions")?).unwrap_or_default();
            names
                .iter()
                .filter_map(|n| tollgate_core::permissions::PermSet::parse([n.as_str()]).ok())
                .fold(
                    tollgate_core::permissions::PermSet::EMPTY,
                    tollgate_core::permissions::PermSet::union,
                )
        },
        created_at: r.try_get("created_at")?,
    })
}

pub async fn insert_issuer(conn: &mut Conn, i: &ExternalIssuer) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO external_issuers (id, tenant_id, issuer, jwks_url, audience, claim, default_role, max_permissions, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(i.id.clone())
    .bind(i.tenant_id.clone())
    .bind(i.issuer.clone())
    .bind(i.jwks_url.clone())
    .bind(i.audience.clone())
    .bind(i.claim.clone())
    .bind(i.default_role.clone())
    .bind(json!(i.max_permissions).to_string())
    .bind(i.created_at)
    .execute(conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => {
            StoreError::Conflict("That issuer is already registered for this audience".into())
        }
        other => other,
    })?;
    Ok(())
}

/// Every registration of an issuer (one per audience), across tenants.
pub async fn issuers_by_iss(pool: &AnyPool, issuer: &str) -> StoreResult<Vec<ExternalIssuer>> {
    let sql = format!("SELECT {ISSUER_COLS} FROM external_issuers WHERE issuer = $1 ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(issuer.to_string())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(issuer_row).collect::<Result<_, _>>()?)
}

pub async fn list_issuers(pool: &AnyPool, tenant_id: &str) -> StoreResult<Vec<ExternalIssuer>> {
    let sql = format!(
        "SELECT {ISSUER_COLS} FROM external_issuers WHERE tenant_id = $1 ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(issuer_row).collect::<Result<_, _>>()?)
}

pub async fn delete_issuer(conn: &mut Conn, tenant_id: &str, id: &str) -> StoreResult<bool> {
    let r = sqlx::query("DELETE FROM external_issuers WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}
