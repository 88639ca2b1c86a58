//! `GET /v1/usage?from&to&group_by&granularity` (SPEC §4.2, permission `usage:read`).
//!
//! Callers who may read the tenant's members (`users:read`) or manage every key (`keys:admin`)
//! see the whole tenant; everyone else with `usage:read` sees only their own usage.

use std::collections::HashMap;

use axum::extract::{Query, State};
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::auth::Permission;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::usage::{self, GroupBy, UsageQuery};
use crate::util::{now_ms, parse_rfc3339, rfc3339};

const MAX_BUCKETS: i64 = 10_000;

fn time_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => parse_rfc3339(s)
            .or_else(|| s.parse::<i64>().ok().map(|secs| secs * 1000))
            .map(Some)
            .ok_or_else(|| {
                ApiError::validation(
                    name,
                    format!("{name} must be an RFC 3339 time or Unix seconds"),
                )
            }),
    }
}

pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    usage(&state, &caller, &q).await.map(axum::Json)
}

/// The answer of `GET /v1/usage` for `caller` and the query parameters `q` (the console's
/// dashboard shows and exports the same).
pub async fn usage(
    state: &AppState,
    caller: &Caller,
    q: &HashMap<String, String>,
) -> ApiResult<Value> {
    caller.require(Permission::UsageRead)?;
    let granularity = q.get("granularity").map_or("hour", String::as_str);
    let bucket_ms: i64 = match granularity {
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        _ => {
            return Err(ApiError::validation(
                "granularity",
                "granularity must be minute, hour or day",
            ));
        }
    };
    let mut group_by = Vec::new();
    if let Some(g) = q.get("group_by").filter(|g| !g.is_empty()) {
        for part in g.split(',') {
            let parsed = GroupBy::parse(part.trim()).ok_or_else(|| {
                ApiError::validation(
                    "group_by",
                    "group_by must be api_key, user, end_user, model or subscription",
                )
            })?;
            if !group_by.contains(&parsed) {
                group_by.push(parsed);
            }
        }
    }
    let to = time_param(q, "to")?.unwrap_or_else(|| now_ms() + 1);
    let from = time_param(q, "from")?.unwrap_or(to - 86_400_000);
    if from >= to {
        return Err(ApiError::validation("from", "from must be before to"));
    }
    // Align to whole buckets so every bucket is complete.
    let from = from - from.rem_euclid(bucket_ms);
    if (to - from) / bucket_ms > MAX_BUCKETS {
        return Err(ApiError::validation(
            "granularity",
            format!(
                "at most {MAX_BUCKETS} buckets per query; use a coarser granularity or a shorter range"
            ),
        ));
    }
    let all = caller.has(Permission::UsersRead) || caller.has(Permission::KeysAdmin);
    let user_id = if all {
        None
    } else {
        match &caller.user_id {
            Some(u) => Some(u.to_string()),
            // A caller without a user (a subscription credential) has no "own" usage here.
            None => {
                return Err(ApiError::permission_denied(
                    "This credential has no own usage to read",
                ));
            }
        }
    };
    let query = UsageQuery {
        tenant_id: caller.tenant_id.to_string(),
        user_id: user_id.clone(),
        from,
        to,
        bucket_ms,
        group_by: group_by.clone(),
    };
    let rows = usage::query(state.store.pool(), &query).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|b| {
            let mut o = Map::new();
            o.insert("object".into(), json!("usage.bucket"));
            o.insert("start_time".into(), json!(rfc3339(b.start)));
            o.insert("end_time".into(), json!(rfc3339(b.start + bucket_ms)));
            for (g, v) in group_by.iter().zip(&b.group) {
                o.insert(g.name().into(), json!(v));
            }
            o.insert("requests".into(), json!(b.requests));
            o.insert("errors".into(), json!(b.errors));
            o.insert("prompt_tokens".into(), json!(b.prompt_tokens));
            o.insert("completion_tokens".into(), json!(b.completion_tokens));
            o.insert(
                "total_tokens".into(),
                json!(b.prompt_tokens + b.completion_tokens),
            );
            let avg = if b.requests > 0 {
                b.latency_ms_sum as f64 / b.requests as f64
            } else {
                0.0
            };
            o.insert("avg_latency_ms".into(), json!((avg * 10.0).round() / 10.0));
            Value::Object(o)
        })
        .collect();
    Ok(json!({
        "object": "list",
        "from": rfc3339(from),
        "to": rfc3339(to),
        "granularity": granularity,
        "group_by": group_by.iter().map(|g| g.name()).collect::<Vec<_>>(),
        "scope": if all { "tenant" } else { "own" },
        "data": data,
    }))
}
