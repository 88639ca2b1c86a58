//! Asynchronous image generations (SPEC §4.1): `POST /v1/images/generations` with
//! `Prefer: respond-async` answers `202` with an operation; `GET /v1/operations/{id}` polls it.
//!
//! Operations live in the store, so they survive restarts and are shared by every instance:
//!
//! - a bounded pool of `operations.workers` tasks per instance claims queued operations one at a
//!   time with an atomic `UPDATE … WHERE status = 'queued'` (exactly one worker wins a row, on any
//!   instance) and holds a lease it renews while the upstream call runs;
//! - on a graceful shutdown a worker drops its upstream call and puts the operation back in the
//!   queue (the attempt is not counted); after a crash the lease runs out and any instance's
//!   recovery loop requeues it, until it has been tried `operations.max_attempts` times, after
//!   which it is marked `failed`;
//! - a worker runs the call under the submitter's identity: it registers with the revocation hub
//!   under the operation's key / user / subscription ids, so revoking the key or cancelling the
//!   subscription cuts it (`cancelled`); queued operations of a cancelled or suspended
//!   subscription are cancelled in the same transaction;
//! - finished operations are deleted after `operations.retention_seconds`.
//!
//! An operation is visible only inside its tenant, and to a subscription's credentials
//! (`x-user-id`, its app JWTs and keys) only if it belongs to that subscription; others get `404`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::auth::CredentialType;
use crate::auth::middleware::Caller;
use crate::auth::revocation::CutReason;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::http::RawJson;
use crate::proxy::{Endpoint, ReplyBody, UpstreamReply};
use crate::store::subscriptions::{self as store, OpStatus, Operation, Status};
use crate::util::{new_id, now_ms};
use crate::wire::ToApi;

pub const KIND_IMAGE_GENERATION: &str = "image_generation";

/// Per-instance worker-pool state.
#[derive(Default)]
pub struct Runtime {
    notify: Notify,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Whether the client asked for an asynchronous answer (RFC 7240 `Prefer: respond-async`).
pub fn wants_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split([',', ';'])
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

fn error_value(e: &ApiError) -> Value {
    e.body()["error"].clone()
}

/// Admits an image generation like the synchronous path does (model, model access, binding),
/// then queues it: `202` with the operation and its `Location`.
pub async fn submit(state: &AppState, caller: Caller, raw: RawJson) -> ApiResult<Response> {
    let model = match raw.value.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::validation(
                "model",
                "The model field is required and must be a string",
            ));
        }
    };
    if state.proxy.route(&model).is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("The model {model:?} does not exist"),
        )
        .with_param("model"));
    }
    if !crate::proxy::model_allowed(&caller, &model) {
        return Err(ApiError::permission_denied(format!(
            "This credential may not use the model {model:?}"
        ))
        .with_param("model"));
    }
    if let Some(binding) = &caller.binding {
        binding.check(&raw.value)?;
    }
    if raw.value.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::validation(
            "stream",
            "an asynchronous image generation cannot stream",
        ));
    }
    let cfg = &state.config.operations;
    let pool = state.store.pool();
    if store::count_queued(pool).await? >= cfg.max_queued as i64 {
        let mut e = ApiError::unavailable("Too many queued operations; retry shortly");
        e.retry_after = Some(5);
        return Err(e);
    }
    let op = Operation {
        id: new_id("op"),
        tenant_id: caller.tenant_id.to_string(),
        subscription_id: caller.subscription_id.as_deref().map(str::to_string),
        user_id: caller.user_id.as_deref().map(str::to_string),
        credential_type: caller.credential_type.as_str().to_string(),
        credential_id: caller.credential_id.as_deref().map(str::to_string),
        end_user: caller.end_user.as_deref().map(str::to_string),
        kind: KIND_IMAGE_GENERATION.into(),
        model,
        request: raw.value,
        status: OpStatus::Queued,
        result: None,
        error: None,
        attempts: 0,
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
    };
    store::insert_operation(pool, &op).await?;
    state.operations.notify.notify_one();
    let location = format!("/v1/operations/{}", op.id);
    let mut res = (StatusCode::ACCEPTED, axum::Json(op.to_api())).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    Ok(res)
}

/// `GET /v1/operations/{id}` (optional auth, `operations:read`).
pub async fn get_operation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("operation");
    let op = store::get_operation(state.store.pool(), &caller.tenant_id, &id)
        .await?
        .ok_or_else(not_found)?;
    if let Some(sub) = &caller.subscription_id
        && op.subscription_id.as_deref() != Some(&**sub)
    {
        return Err(not_found());
    }
    Ok(axum::Json(op.to_api()).into_response())
}

// ---------------------------------------------------------------------------------------------
// The worker pool

/// Starts the workers (kept by the runtime, drained on shutdown) and the recovery loop
/// (returned, aborted with the other background tasks).
pub fn spawn_workers(state: &AppState) -> Vec<JoinHandle<()>> {
    let cfg = &state.config.operations;
    let instance = crate::util::random_base62(8);
    if let Ok(mut w) = state.operations.workers.lock() {
        for i in 0..cfg.workers {
            let s = state.clone();
            let name = format!("{instance}/{i}");
            w.push(tokio::spawn(async move { worker(s, name).await }));
        }
    }
    let s = state.clone();
    vec![tokio::spawn(async move { recover_loop(s).await })]
}

/// Waits (bounded) for the workers to put their running operations back in the queue.
pub async fn drain(state: &AppState) {
    let handles: Vec<JoinHandle<()>> = state
        .operations
        .workers
        .lock()
        .map(|mut w| w.drain(..).collect())
        .unwrap_or_default();
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn lease_ms(state: &AppState) -> i64 {
    (state.config.operations.lease_seconds.max(1) as i64) * 1000
}

async fn recover_loop(state: AppState) {
    let cfg = &state.config.operations;
    let every = Duration::from_millis((lease_ms(&state) as u64 / 2).max(500));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let error = error_value(&ApiError::new(
        ErrorCode::UpstreamError,
        "The operation was interrupted (its gateway instance stopped) too many times",
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match store::recover_expired(
            state.store.pool(),
            now_ms(),
            i64::from(cfg.max_attempts.max(1)),
            &error,
        )
        .await
        {
            Ok((requeued, failed)) => {
                if requeued + failed > 0 {
                    tracing::warn!(requeued, failed, "recovered operations whose lease ran out");
                }
                for _ in 0..requeued {
                    state.operations.notify.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not recover expired operations"),
        }
    }
}

async fn worker(state: AppState, name: String) {
    let poll = Duration::from_millis(state.config.operations.poll_ms.max(10));
    let rt = &state.operations;
    loop {
        if state.shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        match store::claim_operation(state.store.pool(), &name, now, now + lease_ms(&state)).await {
            Ok(Some(op)) => {
                run_one(&state, &name, op).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not claim an operation"),
        }
        tokio::select! {
            () = rt.notify.notified() => {}
            () = tokio::time::sleep(poll) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

enum Outcome {
    Done(OpStatus, Option<Value>, Option<Value>),
    /// Shutting down: give the operation back.
    Release,
}

async fn finish(state: &AppState, worker: &str, op: &Operation, outcome: Outcome) {
    let pool = state.store.pool();
    let r = match outcome {
        Outcome::Release => store::release_operation(pool, &op.id, worker).await,
        Outcome::Done(status, result, error) => {
            store::finish_operation(
                pool,
                &op.id,
                worker,
                status,
                result.as_ref(),
                error.as_ref(),
                now_ms(),
            )
            .await
        }
    };
    match r {
        Ok(true) => {}
        Ok(false) => tracing::warn!(operation = %op.id, "lost the lease of an operation"),
        Err(e) => {
            tracing::warn!(operation = %op.id, error = %e, "could not record an operation's outcome")
        }
    }
}

/// Whether the credential that submitted the operation may still run it.
async fn still_allowed(state: &AppState, op: &Operation) -> Result<Option<ApiError>, ApiError> {
    let pool = state.store.pool();
    if let Some(sub) = &op.subscription_id
        && store::subscription_status(pool, sub).await? != Some(Status::Active)
    {
        return Ok(Some(ApiError::new(
            ErrorCode::SubscriptionInactive,
            "The subscription is no longer active",
        )));
    }
    if op.credential_type == CredentialType::ApiKey.as_str()
        && let Some(key) = &op.credential_id
        && !store::api_key_live(pool, key).await?
    {
        return Ok(Some(ApiError::new(
            ErrorCode::AuthRevoked,
            "The API key that started this operation was revoked",
        )));
    }
    Ok(None)
}

fn cut_error(reason: CutReason) -> ApiError {
    match reason {
        CutReason::Revoked => ApiError::new(
            ErrorCode::AuthRevoked,
            "The credential was revoked while the operation ran",
        ),
        CutReason::SubscriptionInactive => ApiError::new(
            ErrorCode::SubscriptionInactive,
            "The subscription is no longer active",
        ),
        CutReason::Shutdown => ApiError::new(
            ErrorCode::Unavailable,
            "The gateway shut down while the operation ran",
        ),
    }
}

async fn run_one(state: &AppState, worker: &str, op: Operation) {
    let ids: Vec<Arc<str>> = [&op.credential_id, &op.user_id, &op.subscription_id]
        .into_iter()
        .flatten()
        .map(|s| Arc::<str>::from(s.as_str()))
        .collect();
    // Register first, then check: a cancellation after the check still cuts the call.
    let live = state.auth.hub().register(&ids);
    match still_allowed(state, &op).await {
        Ok(None) => {}
        Ok(Some(e)) => {
            let outcome = Outcome::Done(OpStatus::Cancelled, None, Some(error_value(&e)));
            return finish(state, worker, &op, outcome).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check an operation's credential; giving it back");
            return finish(state, worker, &op, Outcome::Release).await;
        }
    }
    let Some(route) = state.proxy.route(&op.model).cloned() else {
        let e = ApiError::new(
            ErrorCode::NotFound,
            format!("The model {:?} is no longer configured", op.model),
        );
        let outcome = Outcome::Done(OpStatus::Failed, None, Some(error_value(&e)));
        return finish(state, worker, &op, outcome).await;
    };
    let mut body = op.request.clone();
    if route.upstream_model != route.name {
        body["model"] = Value::String(route.upstream_model.clone());
    }
    let bytes = Bytes::from(body.to_string());
    let send = state.proxy.send(&route, Endpoint::Images, &body, bytes);
    let mut send = std::pin::pin!(send);
    let renew_every = Duration::from_millis((lease_ms(state) as u64 / 3).max(200));
    let mut renew = tokio::time::interval(renew_every);
    renew.tick().await;
    let reply = loop {
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                return finish(state, worker, &op, Outcome::Release).await;
            }
            () = live.token().cancelled() => {
                let e = cut_error(live.reason());
                let outcome = Outcome::Done(OpStatus::Cancelled, None, Some(error_value(&e)));
                return finish(state, worker, &op, outcome).await;
            }
            r = &mut send => break r,
            _ = renew.tick() => {
                let until = now_ms() + lease_ms(state);
                if let Ok(false) = store::renew_lease(state.store.pool(), &op.id, worker, until).await {
                    tracing::warn!(operation = %op.id, "lost the lease of a running operation");
                    return;
                }
            }
        }
    };
    let outcome = match reply {
        Err(f) => Outcome::Done(
            OpStatus::Failed,
            None,
            Some(error_value(&crate::proxy::upstream_error(f))),
        ),
        Ok(reply) => outcome_of(route.provider.name, reply),
    };
    finish(state, worker, &op, outcome).await;
}

fn outcome_of(provider: &str, reply: UpstreamReply) -> Outcome {
    let failed = |e: ApiError| Outcome::Done(OpStatus::Failed, None, Some(error_value(&e)));
    let ReplyBody::Full(body) = reply.body else {
        return failed(ApiError::new(
            ErrorCode::UpstreamError,
            "The upstream provider answered an image generation with a stream",
        ));
    };
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    if reply.status.is_success() {
        return match parsed {
            Some(v) if v.is_object() => Outcome::Done(OpStatus::Succeeded, Some(v), None),
            _ => failed(ApiError::new(
                ErrorCode::UpstreamError,
                "The upstream provider sent an invalid response",
            )),
        };
    }
    match reply.status.as_u16() {
        400 | 413 | 422 => match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(e) if e.is_object() => Outcome::Done(OpStatus::Failed, None, Some(e.clone())),
            _ => failed(ApiError::new(
                ErrorCode::UpstreamError,
                "The upstream provider rejected the request",
            )),
        },
        429 => failed(ApiError::new(
            ErrorCode::RateLimited,
            "The upstream provider is rate limiting; submit again later",
        )),
        code => {
            tracing::warn!(
                provider,
                status = code,
                "upstream returned an error for an operation"
            );
            failed(ApiError::new(
                ErrorCode::UpstreamError,
                format!("The upstream provider answered with status {code}"),
            ))
        }
    }
}

/// Deletes finished operations past the retention period.
pub async fn prune(state: &AppState) {
    let retention = state.config.operations.retention_seconds as i64 * 1000;
    match store::prune_operations(state.store.pool(), now_ms() - retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "pruned finished operations"),
        Err(e) => tracing::warn!(error = %e, "could not prune operations"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_header_parsing() {
        let mut h = HeaderMap::new();
        assert!(!wants_async(&h));
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=10"));
        assert!(wants_async(&h));
        h.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert!(!wants_async(&h));
        h.insert("prefer", HeaderValue::from_static("Respond-Async"));
        assert!(wants_async(&h));
    }
}
