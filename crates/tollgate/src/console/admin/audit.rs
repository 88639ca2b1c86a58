//! The audit log in the console (`audit:read`, as `GET /v1/audit-events`): filters (actor,
//! action or action prefix, target, time range) in the URL, cursor paging, each event's
//! details, exports as CSV and JSON Lines, and the chain's status computed by the code of
//! `tollgate audit verify`; and the spike alerts (`alert.usage_spike` events) linked to their
//! keys.

use std::collections::HashMap;

use askama::Template;
use axum::extract::RawQuery;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Section, date, gate, query_map, sections};
use crate::auth::Permission;
use crate::console::{Ctx, Session};
use crate::error::ApiResult;
use crate::store::audit::AuditRecord;
use crate::wire::ToApi;

const AUDIT: &[Permission] = &[Permission::AuditRead];
/// The most events one export holds.
const EXPORT_MAX: usize = 50_000;

/// The page's filters, as in the URL (`from`/`to` are dates, `YYYY-MM-DD`, UTC).
#[derive(Default)]
pub struct AuditView {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub from: String,
    pub to: String,
    pub cursor: String,
}

fn is_date(s: &str) -> bool {
    s.len() == 10 && crate::util::parse_rfc3339(&format!("{s}T00:00:00Z")).is_some()
}

impl AuditView {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let text = |k: &str| {
            q.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| v.len() <= 200)
                .unwrap_or_default()
        };
        let day = |k: &str| q.get(k).filter(|v| is_date(v)).cloned().unwrap_or_default();
        Self {
            actor: text("actor"),
            action: text("action"),
            target: text("target"),
            from: day("from"),
            to: day("to"),
            cursor: q
                .get("cursor")
                .filter(|c| c.parse::<i64>().is_ok_and(|n| n > 0))
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The `/v1/audit-events` parameters of this view.
    fn api_query(&self) -> HashMap<String, String> {
        let mut q = HashMap::new();
        let mut put = |k: &str, v: String| {
            if !v.is_empty() {
                q.insert(k.to_string(), v);
            }
        };
        put("actor", self.actor.clone());
        put("action", self.action.clone());
        put("target", self.target.clone());
        if !self.from.is_empty() {
            put("from", format!("{}T00:00:00Z", self.from));
        }
        if !self.to.is_empty() {
            put("to", format!("{}T23:59:59Z", self.to));
        }
        put("cursor", self.cursor.clone());
        q
    }

    /// The filters as a query string (without the cursor).
    fn filters(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }
}

pub struct EventRow {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The console page of the target, when it has one.
    pub target_link: Option<String>,
    pub outcome: String,
    pub ip: String,
    pub request_id: String,
    pub details: String,
}

fn who(v: &Value, emails: &HashMap<String, String>) -> String {
    let kind = v["type"].as_str().unwrap_or_default();
    match v["id"].as_str() {
        Some(id) => match emails.get(id) {
            Some(e) => format!("{kind} {e}"),
            None => format!("{kind} {id}"),
        },
        None => kind.to_string(),
    }
}

fn row(e: &AuditRecord, emails: &HashMap<String, String>) -> EventRow {
    let target_id = e.target["id"].as_str().unwrap_or_default();
    let target_link = match e.target["type"].as_str() {
        Some("api_key") if !target_id.is_empty() => {
            Some(format!("/console/admin/keys/{target_id}"))
        }
        Some("user") if !target_id.is_empty() => Some(format!("/console/admin/people/{target_id}")),
        _ => None,
    };
    EventRow {
        seq: e.seq,
        time: date(e.ts),
        actor: who(&e.actor, emails),
        action: e.action.clone(),
        target: if e.target["type"].is_null() {
            String::new()
        } else {
            who(&e.target, emails)
        },
        target_link,
        outcome: e.outcome.clone(),
        ip: e.ip.clone().unwrap_or_default(),
        request_id: e.request_id.clone().unwrap_or_default(),
        details: serde_json::to_string_pretty(&e.details).unwrap_or_default(),
    }
}

async fn emails(ctx: &Ctx, s: &Session) -> ApiResult<HashMap<String, String>> {
    Ok(
        crate::store::tenants::list_members(ctx.state.store.pool(), &s.tenant_id)
            .await?
            .into_iter()
            .map(|m| (m.user.id, m.user.email))
            .collect(),
    )
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    view: AuditView,
    rows: Vec<EventRow>,
    next: Option<String>,
    filters: String,
}

/// `GET /console/admin/audit?actor&action&target&from&to&cursor`.
pub async fn log(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, AUDIT, "The audit log") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let view = AuditView::from_query(&query_map(query.as_deref()));
    let load = async {
        let (events, next) =
            crate::api::audit::page(&ctx.state, &s.caller(), &view.api_query()).await?;
        let emails = emails(&ctx, s).await?;
        ApiResult::Ok((events.iter().map(|e| row(e, &emails)).collect(), next))
    };
    match load.await {
        Ok((rows, next)) => {
            let filters = view.filters();
            let page = AuditPage {
                l: ctx.layout("Audit log"),
                nav: sections(s, "/console/admin/audit"),
                next: next.map(|c| {
                    if filters.is_empty() {
                        format!("/console/admin/audit?cursor={c}")
                    } else {
                        format!("/console/admin/audit?{filters}&cursor={c}")
                    }
                }),
                filters,
                rows,
                view,
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

#[derive(Template)]
#[template(path = "admin/audit_chain.html")]
struct ChainPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    ok: bool,
    text: String,
}

/// `GET /console/admin/audit/verify`: the chain's status (a page of its own, loaded into the
/// audit page after it is shown, so a long chain does not hold the page up).
pub async fn verify(ctx: Ctx) -> Response {
    let s = match gate(&ctx, AUDIT, "The audit log") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let result = crate::store::audit::verify_tenant(ctx.state.store.pool(), &s.tenant_id).await;
    let (ok, text) = match result {
        Ok(Ok(0)) => (true, "The audit chain is empty.".to_string()),
        Ok(Ok(n)) => (true, format!("Chain verified through event {n}.")),
        Ok(Err(b)) => (
            false,
            format!(
                "The chain is broken at event {}{}: {}.",
                b.seq,
                b.event_id.map(|i| format!(" ({i})")).unwrap_or_default(),
                b.reason
            ),
        ),
        Err(e) => return ctx.error(&e.into()),
    };
    let page = ChainPage {
        l: ctx.layout("Audit chain"),
        nav: sections(s, "/console/admin/audit"),
        ok,
        text,
    };
    ctx.html(StatusCode::OK, &page)
}

fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Every event of the view (from the newest, page by page, at most [`EXPORT_MAX`]).
async fn all_events(ctx: &Ctx, s: &Session, view: &AuditView) -> ApiResult<Vec<AuditRecord>> {
    let caller = s.caller();
    let mut q = view.api_query();
    q.insert("limit".into(), "500".into());
    let mut out = Vec::new();
    loop {
        let (events, next) = crate::api::audit::page(&ctx.state, &caller, &q).await?;
        out.extend(events);
        match next {
            Some(c) if out.len() < EXPORT_MAX => {
                q.insert("cursor".into(), c);
            }
            _ => break,
        }
    }
    out.truncate(EXPORT_MAX);
    Ok(out)
}

fn download(ctx: &Ctx, body: String, kind: &'static str, name: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
    ctx.finish(res)
}

/// `GET /console/admin/audit.csv?…` (the filters of the page).
pub async fn export_csv(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, AUDIT, "The audit log") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let view = AuditView::from_query(&query_map(query.as_deref()));
    match all_events(&ctx, s, &view).await {
        Ok(events) => {
            let mut out = String::from(
                "seq,id,ts,actor_type,actor_id,action,target_type,target_id,outcome,ip,user_agent,request_id,details\r\n",
            );
            for e in &events {
                let t = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
                let fields = [
                    e.seq.to_string(),
                    e.id.clone(),
                    crate::util::rfc3339(e.ts),
                    t(&e.actor, "type"),
                    t(&e.actor, "id"),
                    e.action.clone(),
                    t(&e.target, "type"),
                    t(&e.target, "id"),
                    e.outcome.clone(),
                    e.ip.clone().unwrap_or_default(),
                    e.user_agent.clone().unwrap_or_default(),
                    e.request_id.clone().unwrap_or_default(),
                    e.details.to_string(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&line.join(","));
                out.push_str("\r\n");
            }
            download(
                &ctx,
                out,
                "text/csv; charset=utf-8",
                "attachment; filename=\"tollgate-audit.csv\"",
            )
        }
        Err(e) => ctx.error(&e),
    }
}

/// `GET /console/admin/audit.jsonl?…`: one event a line, as `GET /v1/audit-events` gives it.
pub async fn export_jsonl(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, AUDIT, "The audit log") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let view = AuditView::from_query(&query_map(query.as_deref()));
    match all_events(&ctx, s, &view).await {
        Ok(events) => {
            let mut out = String::new();
            for e in &events {
                out.push_str(&e.to_api().to_string());
                out.push('\n');
            }
            download(
                &ctx,
                out,
                "application/jsonl; charset=utf-8",
                "attachment; filename=\"tollgate-audit.jsonl\"",
            )
        }
        Err(e) => ctx.error(&e),
    }
}

// ---- spike alerts ------------------------------------------------------------------------------

pub struct AlertRow {
    pub time: String,
    pub minute: String,
    pub key_id: String,
    pub key_name: String,
    pub requests: String,
    pub baseline: String,
    pub multiple: String,
}

#[derive(Template)]
#[template(path = "admin/alerts.html")]
struct AlertsPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<AlertRow>,
    next: Option<String>,
    can_revoke: bool,
}

/// `GET /console/admin/alerts?cursor`: the `alert.usage_spike` events, newest first.
pub async fn alerts(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, AUDIT, "Spike alerts") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    let mut api = HashMap::new();
    api.insert("action".to_string(), "alert.usage_spike".to_string());
    if let Some(c) = q
        .get("cursor")
        .filter(|c| c.parse::<i64>().is_ok_and(|n| n > 0))
    {
        api.insert("cursor".to_string(), c.clone());
    }
    let load = async {
        let (events, next) = crate::api::audit::page(&ctx.state, &s.caller(), &api).await?;
        let keys = crate::store::keys::list(ctx.state.store.pool(), &s.tenant_id, None).await?;
        let rows = events
            .iter()
            .map(|e| {
                let key_id = e.target["id"].as_str().unwrap_or_default().to_string();
                let d = &e.details;
                let words = |k: &str| match &d[k] {
                    Value::Null => "—".to_string(),
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                AlertRow {
                    time: date(e.ts),
                    minute: words("minute"),
                    key_name: keys
                        .iter()
                        .find(|k| k.id == key_id)
                        .map(|k| k.name.clone())
                        .unwrap_or_default(),
                    requests: words("requests_in_minute"),
                    baseline: words("baseline_per_minute"),
                    multiple: words("multiple"),
                    key_id,
                }
            })
            .collect();
        ApiResult::Ok((rows, next))
    };
    match load.await {
        Ok((rows, next)) => {
            let page = AlertsPage {
                l: ctx.layout("Spike alerts"),
                nav: sections(s, "/console/admin/alerts"),
                rows,
                next: next.map(|c| format!("/console/admin/alerts?cursor={c}")),
                can_revoke: s.principal.has(Permission::KeysAdmin),
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}
