//! The per-request meter: admission (limits + quota reservation + a reserved slot in the usage
//! queue) before the upstream call, and settlement when it drops — after a JSON answer, at the end
//! of a stream, or when the client disconnects mid-stream (the stream state, which owns the
//! meter, is dropped then). Settlement therefore happens exactly once, whatever the path.

use std::time::Instant;

use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc::OwnedPermit;

use super::{RateHeaders, Reservation};
use crate::app::AppState;
use crate::auth::{CredentialType, Principal};
use crate::error::ApiError;
use crate::proxy::sse::Usage;
use crate::usage::{RequestInfo, UsageRecord};

/// Longest end-user id kept (longer ones are cut).
const END_USER_MAX: usize = 256;

/// The end user a request is accounted to (SPEC §2.6): an app JWT's `sub`, else the
/// `X-End-User-Id` header (not for app JWTs), else the body's `user`. Never grants anything.
pub fn end_user(p: &Principal, header: Option<&str>, body: &Value) -> Option<String> {
    let from_header = || {
        (p.credential_type != CredentialType::AppJwt)
            .then_some(header)
            .flatten()
            .map(str::to_string)
    };
    p.end_user
        .as_deref()
        .map(str::to_string)
        .or_else(from_header)
        .or_else(|| body.get("user").and_then(Value::as_str).map(str::to_string))
        .map(|s| s.trim().chars().take(END_USER_MAX).collect::<String>())
        .filter(|s| !s.is_empty())
}

fn text_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_len).sum(),
        Value::Object(o) => o.values().map(text_len).sum(),
        _ => 0,
    }
}

/// Tokens estimated at admission: the prompt (≈ 4 bytes per token) plus the completion budget
/// (`max_completion_tokens`/`max_tokens`, else `default_max_tokens` for chat), times `n`.
pub fn estimate_tokens(body: &Value, chat: bool, default_max_tokens: u64) -> (u64, u64) {
    let prompt_text: usize = ["messages", "input", "prompt"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(text_len)
        .sum();
    let prompt = (prompt_text as u64).div_ceil(4).max(1);
    let max = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let completion = match max {
        Some(m) => m,
        None if chat => default_max_tokens,
        None => 0,
    };
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    (prompt, prompt + completion.saturating_mul(n))
}

/// Admission for one inference request. Errors are `429 RATE_LIMITED` / `QUOTA_EXCEEDED`
/// carrying `Retry-After` and the rate-limit headers (their usage record is written here).
pub async fn admit(
    state: &AppState,
    caller: &Principal,
    route: &'static str,
    model: &str,
    body: &Value,
    info: &RequestInfo,
) -> Result<Meter, ApiError> {
    let chat = route == "chat/completions";
    let (prompt_estimate, estimate) =
        estimate_tokens(body, chat, state.limits.config().default_max_tokens);
    let record = UsageRecord {
        ts: crate::util::now_ms(),
        request_id: info.request_id.clone(),
        tenant_id: caller.tenant_id.clone(),
        api_key_id: (caller.credential_type == CredentialType::ApiKey)
            .then(|| caller.credential_id.clone())
            .flatten(),
        user_id: caller.user_id.clone(),
        subscription_id: caller.subscription_id.clone(),
        end_user: end_user(caller, info.end_user.as_deref(), body).map(Into::into),
        model: model.into(),
        route,
        status: 0,
        outcome: "ok",
        prompt_tokens: 0,
        completion_tokens: 0,
        latency_ms: 0,
    };
    // Backpressure, never loss: wait for room in the usage queue before doing any work.
    let permit = state.usage.reserve().await;
    let checks = state.limits.checks_for(caller, estimate);
    let started = Instant::now();
    match state.limits.decide(checks).await {
        Ok((reservation, headers)) => Ok(Meter {
            state: state.clone(),
            reservation,
            headers,
            permit,
            record: Some(record),
            started,
            prompt_estimate,
            usage: None,
            chunks: 0,
            complete: false,
            status: 200,
            outcome: None,
        }),
        Err(err) => {
            let mut record = record;
            record.status = err.code.status().as_u16();
            record.outcome = if err.code == crate::error::ErrorCode::QuotaExceeded {
                "quota_exceeded"
            } else {
                "rate_limited"
            };
            crate::usage::Usage::send(permit, record);
            Err(err)
        }
    }
}

/// An admitted request. Dropping it settles the limits and emits the usage record.
pub struct Meter {
    state: AppState,
    reservation: Option<Reservation>,
    headers: RateHeaders,
    permit: Option<OwnedPermit<UsageRecord>>,
    record: Option<UsageRecord>,
    started: Instant,
    prompt_estimate: u64,
    usage: Option<Usage>,
    chunks: u64,
    complete: bool,
    status: u16,
    outcome: Option<&'static str>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("status", &self.status)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

fn outcome_of(code: crate::error::ErrorCode) -> &'static str {
    use crate::error::ErrorCode as C;
    match code {
        C::AuthRevoked | C::SubscriptionInactive => "revoked",
        C::UpstreamTimeout => "upstream_timeout",
        C::RateLimited => "upstream_rate_limited",
        _ => "upstream_error",
    }
}

impl Meter {
    /// Takes the rate-limit headers (for a streamed answer, whose head is built before the body).
    pub fn take_headers(&mut self) -> RateHeaders {
        std::mem::take(&mut self.headers)
    }

    /// A failed request: records the error's status, adds the rate-limit headers to it.
    pub fn fail(mut self, mut err: ApiError) -> ApiError {
        self.status = err.code.status().as_u16();
        self.outcome = Some(outcome_of(err.code));
        err.headers.extend(self.take_headers().into_vec());
        err
    }

    /// A complete (non-streamed) answer: records its status and adds the headers.
    pub fn respond(mut self, mut res: Response) -> Response {
        self.status = res.status().as_u16();
        self.complete = true;
        if self.status >= 400 {
            self.outcome = Some(if self.status == 429 {
                "upstream_rate_limited"
            } else {
                "upstream_error"
            });
        }
        self.take_headers().apply(res.headers_mut());
        res
    }

    /// Usage reported by the upstream.
    pub fn set_usage(&mut self, usage: Option<Usage>) {
        if usage.is_some() {
            self.usage = usage;
        }
    }

    /// One content chunk forwarded (estimates a cut stream's completion tokens).
    pub fn chunk(&mut self) {
        self.chunks += 1;
    }

    /// The stream ended normally.
    pub fn stream_complete(&mut self) {
        self.complete = true;
    }

    /// The stream was ended by the gateway (`reason` as in `streams_cut`).
    pub fn stream_failed(&mut self, reason: &'static str) {
        self.outcome = Some(match reason {
            "revoked" => "revoked",
            "upstream_timeout" => "upstream_timeout",
            _ => "upstream_error",
        });
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let Some(mut rec) = self.record.take() else {
            return;
        };
        let ok = self.status < 400;
        let cut = ok && !self.complete && self.outcome.is_none();
        // Tokens: what the upstream reported; for a stream cut before its usage chunk, the
        // prompt estimate plus one token per forwarded chunk.
        let (prompt, completion, actual) = match self.usage {
            Some(u) => (
                u.prompt_tokens,
                u.completion_tokens,
                Some(u.prompt_tokens + u.completion_tokens),
            ),
            None if ok && self.chunks > 0 => (
                self.prompt_estimate,
                self.chunks,
                Some(self.prompt_estimate + self.chunks),
            ),
            None if ok => (0, 0, None),
            None => (0, 0, Some(0)),
        };
        if let Some(r) = self.reservation.take() {
            self.state.limits.settle(r, ok, actual);
        }
        rec.status = self.status;
        rec.outcome = if cut {
            "client_closed"
        } else {
            self.outcome.unwrap_or("ok")
        };
        rec.prompt_tokens = prompt;
        rec.completion_tokens = completion;
        rec.latency_ms = self.started.elapsed().as_millis() as u64;
        crate::usage::Usage::send(self.permit.take(), rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_prompt_and_completion() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "0123456789abcdef"}],
            "max_tokens": 100});
        let (p, total) = estimate_tokens(&body, true, 256);
        assert!(p >= 4 && total == p + 100, "{p} {total}");
        let body = json!({"model": "m", "messages": [], "n": 2});
        let (p, total) = estimate_tokens(&body, true, 256);
        assert_eq!(total, p + 512);
        let body = json!({"model": "e", "input": "hello world"});
        let (p, total) = estimate_tokens(&body, false, 256);
        assert_eq!(p, total);
    }
}
