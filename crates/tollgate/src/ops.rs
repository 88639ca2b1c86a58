//! Operations endpoints: `/health` (liveness), `/ready` (store reachable), `/metrics`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;

pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("Shutting down").into_response();
    }
    if state.store.ping().await {
        // "limits": local | redis | local-fallback (Redis configured but unreachable: still ready,
        // limits enforced per instance).
        axum::Json(json!({"status": "ready", "store": "ok", "limits": state.limits.mode()}))
            .into_response()
    } else {
        let mut e = ApiError::unavailable("The store is unreachable");
        e.retry_after = Some(1);
        e.into_response()
    }
}

/// Prometheus text. Public unless `metrics_token` is configured, then `Bearer <token>` is required.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = state
        .config
        .metrics_token
        .as_ref()
        .filter(|t| !t.is_empty())
    {
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return ApiError::auth_missing().into_response();
        };
        let presented = auth.strip_prefix("Bearer ").unwrap_or_default().trim();
        if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
            return ApiError::auth_invalid("Invalid metrics token").into_response();
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
