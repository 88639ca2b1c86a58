//! `GET /v1/audit-events?actor&action&target&from&to&cursor&limit` (SPEC §4.2, §8; permission
//! `audit:read`): the caller's tenant's events, newest first, with cursor pagination.
//! `action` may end in `*` to match a prefix (`api_key.*`); `cursor` is the `next_cursor` of the
//! previous page.

use std::collections::HashMap;

use axum::extract::{Query, State};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Permission;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::audit::{self, AuditFilter};
use crate::util::parse_rfc3339;
use crate::wire::ToApi;

fn time_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => parse_rfc3339(s)
            .map(Some)
            .ok_or_else(|| ApiError::validation(name, format!("{name} must be an RFC 3339 time"))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let (events, next_cursor) = page(&state, &caller, &q).await?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": events.iter().map(audit::AuditRecord::to_api).collect::<Vec<_>>(),
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
    })))
}

/// One page of the caller's tenant's events for the query parameters `q` (`actor`, `action`,
/// `from`, `to`, `cursor`, `limit`), newest first, and the cursor of the next page if there is
/// one. The console's audit page and exports read the same.
pub async fn page(
    state: &AppState,
    caller: &Caller,
    q: &HashMap<String, String>,
) -> ApiResult<(Vec<audit::AuditRecord>, Option<String>)> {
    caller.require(Permission::AuditRead)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::validation("limit", "limit must be 1-500"))?,
    };
    let before_seq = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::validation("cursor", "invalid cursor"))?,
        ),
    };
    let filter = AuditFilter {
        actor: q.get("actor").filter(|s| !s.is_empty()).cloned(),
        action: q.get("action").filter(|s| !s.is_empty()).cloned(),
        from: time_param(q, "from")?,
        to: time_param(q, "to")?,
        target: q.get("target").filter(|s| !s.is_empty()).cloned(),
        before_seq,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let mut events = audit::list(state.store.pool(), &caller.tenant_id, &filter).await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_cursor = if has_more {
        events.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok((events, next_cursor))
}
