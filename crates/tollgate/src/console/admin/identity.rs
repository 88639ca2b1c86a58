//! OAuth clients and external identity providers in the console (`tenant:admin`, as
//! `/v1/oauth-clients` and `/v1/identity-providers`): register a public or confidential client
//! (the secret shown once), revoke it; register an IdP, delete it; and "test a token", which
//! says why a pasted token would be accepted or refused, by the verification requests use.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tollgate_core::permissions::OWNER_ROLE;

use super::people::{RoleBox, all_roles, powers, role_boxes};
use super::{Section, date, error_for, gate, is_form_error, posted, query_map, sections};
use crate::auth::Permission;
use crate::console::{Ctx, Session};
use crate::error::{ApiError, ApiResult};
use crate::service::Unit;
use crate::service::identity as idsvc;
use crate::store::identity as idstore;

const ADMIN: &[Permission] = &[Permission::TenantAdmin];

// ---- OAuth clients ---------------------------------------------------------------------------

pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub redirect_uris: String,
    pub roles: String,
    pub created: String,
    pub active: bool,
}

#[derive(Default)]
pub struct ClientForm {
    pub name: String,
    pub redirect_uris: String,
    pub confidential: bool,
    pub error: Option<String>,
    pub name_error: Option<String>,
    pub uris_error: Option<String>,
    pub roles_error: Option<String>,
}

pub struct ShownClient {
    pub client_id: String,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "admin/clients.html")]
struct ClientsPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<ClientRow>,
    roles: Vec<RoleBox>,
    form: ClientForm,
    shown: Option<ShownClient>,
}

async fn clients_page(
    ctx: &Ctx,
    s: &Session,
    form: ClientForm,
    checked: &[String],
    shown: Option<ShownClient>,
) -> ApiResult<ClientsPage> {
    let clients = idstore::list_clients(ctx.state.store.pool(), &s.tenant_id).await?;
    let mut c = super::people::conn(ctx).await?;
    let mut rows = Vec::new();
    for cl in clients {
        let names = crate::service::users::role_names(&mut c, &s.tenant_id, &cl.roles).await?;
        rows.push(ClientRow {
            kind: if cl.confidential {
                "confidential (service account)"
            } else {
                "public"
            },
            redirect_uris: cl.redirect_uris.join(" "),
            roles: names.join(", "),
            created: date(cl.created_at),
            active: cl.revoked_at.is_none(),
            id: cl.id,
            name: cl.name,
        });
    }
    drop(c);
    let p = powers(ctx, s).await?;
    let roles = role_boxes(&all_roles(ctx, &s.tenant_id).await?, &p, checked)
        .into_iter()
        .filter(|r| r.name != OWNER_ROLE)
        .collect();
    Ok(ClientsPage {
        l: ctx.layout("OAuth clients"),
        nav: sections(s, "/console/admin/clients"),
        rows,
        roles,
        form,
        shown,
    })
}

/// `GET /console/admin/clients`; right after a confidential client was registered, its secret
/// (once).
pub async fn clients(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, ADMIN, "Managing OAuth clients") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let shown = match s
        .take_flash_for(&ctx.state, |f| f["client_id"].is_string())
        .await
    {
        Ok(Some(f)) => Some(ShownClient {
            client_id: f["client_id"].as_str().unwrap_or_default().to_string(),
            secret: f["value"].as_str().unwrap_or_default().to_string(),
        }),
        Ok(_) => None,
        Err(e) => return ctx.error(&e),
    };
    let q = query_map(query.as_deref());
    match clients_page(&ctx, s, ClientForm::default(), &[], shown).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[
                    ("created", "The client is registered."),
                    (
                        "revoked",
                        "The client is revoked; its tokens no longer work.",
                    ),
                ],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/clients` (as `POST /v1/oauth-clients`): writes `oauth_client.created`.
pub async fn create_client(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ADMIN, "Managing OAuth clients") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = ClientForm {
        name: p.field("name"),
        redirect_uris: p.field("redirect_uris"),
        confidential: p.field("confidential") == "1",
        ..ClientForm::default()
    };
    let roles = p.values("role");
    let input = idsvc::NewClient {
        name: form.name.clone(),
        redirect_uris: form
            .redirect_uris
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        confidential: form.confidential,
        roles: (!roles.is_empty()).then(|| roles.clone()),
    };
    let result = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let out = idsvc::create_client(&mut unit, &p.caller, input).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(out)
    }
    .await;
    match result {
        Ok((client, secret)) => {
            if let Some(secret) = secret {
                let flash = json!({"client_id": client.id, "value": secret});
                if let Err(e) = p.session.set_flash(&ctx.state, &flash).await {
                    return ctx.error(&e);
                }
            }
            ctx.redirect("/console/admin/clients?done=created")
        }
        Err(e) if is_form_error(&e) => {
            form.name_error = error_for(Some(&e), "name");
            form.uris_error = error_for(Some(&e), "redirect_uris");
            form.roles_error = error_for(Some(&e), "roles");
            form.error = Some(format!("The client was not registered: {}", e.message));
            match clients_page(&ctx, p.session, form, &roles, None).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/clients/{id}/revoke` (as `DELETE /v1/oauth-clients/{id}`).
pub async fn revoke_client(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ADMIN, "Managing OAuth clients") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        idsvc::revoke_client(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin/clients?done=revoked"),
        Err(e) => ctx.error(&e),
    }
}

// ---- identity providers ----------------------------------------------------------------------

pub struct IdpRow {
    pub id: String,
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub claim: String,
    pub default_role: String,
    pub created: String,
}

#[derive(Default)]
pub struct IdpForm {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub claim: String,
    pub default_role: String,
    pub error: Option<String>,
    pub issuer_error: Option<String>,
    pub jwks_error: Option<String>,
    pub audience_error: Option<String>,
    pub role_error: Option<String>,
}

/// What "test a token" found.
pub struct Verdict {
    pub accepted: bool,
    pub summary: String,
    pub facts: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "admin/idps.html")]
struct IdpsPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<IdpRow>,
    /// Roles an IdP's unknown identities may get (never `owner`; only what the caller holds).
    roles: Vec<String>,
    form: IdpForm,
    verdict: Option<Verdict>,
}

async fn idps_page(ctx: &Ctx, s: &Session, form: IdpForm) -> ApiResult<IdpsPage> {
    let regs = idstore::list_issuers(ctx.state.store.pool(), &s.tenant_id).await?;
    let all = all_roles(ctx, &s.tenant_id).await?;
    let mut c = super::people::conn(ctx).await?;
    let mut rows = Vec::new();
    for r in regs {
        let default_role = match &r.default_role {
            Some(id) => {
                crate::service::users::role_names(&mut c, &s.tenant_id, std::slice::from_ref(id))
                    .await?
                    .join("")
            }
            None => String::new(),
        };
        rows.push(IdpRow {
            id: r.id,
            issuer: r.issuer,
            jwks_url: r.jwks_url,
            audience: r.audience,
            claim: r.claim,
            default_role,
            created: date(r.created_at),
        });
    }
    let held = s.principal.permissions;
    let roles = all
        .into_iter()
        .filter(|(n, _, perms)| n != OWNER_ROLE && perms.is_subset_of(held))
        .map(|(n, _, _)| n)
        .collect();
    Ok(IdpsPage {
        l: ctx.layout("Identity providers"),
        nav: sections(s, "/console/admin/identity-providers"),
        rows,
        roles,
        form,
        verdict: None,
    })
}

/// `GET /console/admin/identity-providers`.
pub async fn idps(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, ADMIN, "Managing identity providers") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    let form = IdpForm {
        claim: "email".into(),
        ..IdpForm::default()
    };
    match idps_page(&ctx, s, form).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[
                    ("created", "The identity provider is registered."),
                    (
                        "deleted",
                        "The identity provider is deleted; its tokens no longer work.",
                    ),
                ],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/identity-providers` (as `POST /v1/identity-providers`): writes
/// `identity_provider.created`.
pub async fn create_idp(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ADMIN, "Managing identity providers") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = IdpForm {
        issuer: p.field("issuer"),
        jwks_url: p.field("jwks_url"),
        audience: p.field("audience"),
        claim: p.field("claim"),
        default_role: p.field("default_role"),
        ..IdpForm::default()
    };
    let result = async {
        let claim = match form.claim.as_str() {
            "" | "email" => "email",
            "sub" => "sub",
            _ => return Err(ApiError::validation("claim", "claim is email or sub")),
        };
        let input = idsvc::check_identity_provider(
            &ctx.state,
            &form.issuer,
            &form.jwks_url,
            form.audience.clone(),
            Some(claim.to_string()),
            (!form.default_role.is_empty()).then(|| form.default_role.clone()),
        )
        .await?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let reg = idsvc::create_identity_provider(&mut unit, &p.caller, input).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(reg)
    }
    .await;
    match result {
        Ok(_) => ctx.redirect("/console/admin/identity-providers?done=created"),
        Err(e) if is_form_error(&e) => {
            form.issuer_error = error_for(Some(&e), "issuer");
            form.jwks_error = error_for(Some(&e), "jwks_url");
            form.audience_error = error_for(Some(&e), "audience");
            form.role_error = error_for(Some(&e), "default_role")
                .or_else(|| error_for(Some(&e), "roles"))
                .or_else(|| {
                    (e.code == crate::error::ErrorCode::PermissionDenied).then(|| e.message.clone())
                });
            form.error = Some(format!(
                "The identity provider was not registered: {}",
                e.message
            ));
            match idps_page(&ctx, p.session, form).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/identity-providers/{id}/delete` (as `DELETE /v1/identity-providers/{id}`).
pub async fn delete_idp(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ADMIN, "Managing identity providers") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        idsvc::delete_identity_provider(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => {
            ctx.state.auth.identity.external.forget(&id).await;
            ctx.redirect("/console/admin/identity-providers?done=deleted")
        }
        Err(e) => ctx.error(&e),
    }
}

fn claim_words(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Why `token` would be accepted or refused, for this tenant.
async fn verdict(ctx: &Ctx, s: &Session, token: &str) -> Verdict {
    let refuse = |summary: String, facts: Vec<(String, String)>| Verdict {
        accepted: false,
        summary,
        facts,
    };
    let mut facts = Vec::new();
    let claims = match crate::auth::jwt::peek_claims(token) {
        Ok(c) => c,
        Err(_) => {
            return refuse(
                "Refused: this is not a well-formed JWT (three base64url parts, the middle one a JSON object).".into(),
                facts,
            );
        }
    };
    let header = crate::identity::jws::check_header(token);
    if let Ok(h) = &header {
        facts.push(("alg".into(), claim_words(h.get("alg"))));
        facts.push(("kid".into(), claim_words(h.get("kid"))));
    }
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    facts.push(("iss".into(), claim_words(claims.get("iss"))));
    facts.push(("aud".into(), claim_words(claims.get("aud"))));
    facts.push(("sub".into(), claim_words(claims.get("sub"))));
    facts.push(("email".into(), claim_words(claims.get("email"))));
    let now = crate::util::now_ms() / 1000;
    if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
        let when = crate::util::rfc3339(exp.saturating_mul(1000));
        facts.push((
            "exp".into(),
            if exp < now {
                format!("{when} (in the past)")
            } else {
                when
            },
        ));
    }
    if let Err(e) = header {
        return refuse(format!("Refused: {}", e.message), facts);
    }
    if iss.is_empty() {
        return refuse(
            "Refused: the token has no iss (issuer) claim.".into(),
            facts,
        );
    }
    if iss == ctx.state.config.public_url {
        return refuse(
            "This token was issued by Tollgate itself, not by an external identity provider: it is checked as a platform token, not here.".into(),
            facts,
        );
    }
    let regs = match idstore::list_issuers(ctx.state.store.pool(), &s.tenant_id).await {
        Ok(r) => r,
        Err(_) => return refuse("The store cannot be read right now.".into(), facts),
    };
    let same_issuer: Vec<_> = regs.iter().filter(|r| r.issuer == iss).collect();
    if same_issuer.is_empty() {
        return refuse(
            format!(
                "Refused: no identity provider of this tenant has the issuer {iss:?}. Register it below, with exactly this issuer."
            ),
            facts,
        );
    }
    let auds: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if !same_issuer
        .iter()
        .any(|r| auds.iter().any(|a| a == &r.audience))
    {
        let want: Vec<&str> = same_issuer.iter().map(|r| r.audience.as_str()).collect();
        return refuse(
            format!(
                "Refused: the token's audience ({}) is not the registered audience ({}).",
                if auds.is_empty() {
                    "none".to_string()
                } else {
                    auds.join(", ")
                },
                want.join(", ")
            ),
            facts,
        );
    }
    match crate::identity::external::verify(&ctx.state.auth, token, &iss).await {
        Ok(p) if p.tenant_id.as_ref() == s.tenant_id => {
            let who = match &p.user_id {
                Some(u) => format!("as the member {u}, with their current roles"),
                None => "as no member (nobody here has this identity): the provider's default role applies".to_string(),
            };
            Verdict {
                accepted: true,
                summary: format!(
                    "Accepted: the signature, issuer, audience and expiry check out; a request with it acts {who}, capped at what the provider's registrant held. Permissions: {}.",
                    p.permissions.names().join(" ")
                ),
                facts,
            }
        }
        Ok(_) => refuse(
            "Refused here: the token matches an identity provider of another tenant.".into(),
            facts,
        ),
        Err(e) => refuse(format!("Refused: {}", e.message), facts),
    }
}

/// `POST /console/admin/identity-providers/test` (`token`): no change, no audit event; the
/// token is only verified and never stored or logged.
pub async fn test_token(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ADMIN, "Managing identity providers") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let token = p.field("token");
    let v = if token.is_empty() {
        Verdict {
            accepted: false,
            summary: "Paste a token to test.".into(),
            facts: Vec::new(),
        }
    } else {
        verdict(&ctx, p.session, &token).await
    };
    let form = IdpForm {
        claim: "email".into(),
        ..IdpForm::default()
    };
    match idps_page(&ctx, p.session, form).await {
        Ok(mut page) => {
            // The pasted token is not rendered back: it may be a live credential.
            page.verdict = Some(v);
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}
