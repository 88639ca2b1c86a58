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
use crate::usage::RequestInfo;
use tollgate_core::usage::UsageRecord;
use tollgate_upstream::sse::TokenUsage;

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

/// The largest token count a request may ask for (`max_tokens`, `max_completion_tokens`) and an
/// upstream's reported usage is taken at: 2^31 - 1, the largest value upstreams that read it as a
/// 32-bit integer accept. Larger requested values are refused (`422`); larger reported ones are
/// counted as this, so every sum of token counts stays far from overflowing.
pub const MAX_TOKENS: u64 = tollgate_upstream::sse::MAX_REPORTED_TOKENS;

/// The largest `n` (completions or images per request): OpenAI's ceiling for chat.
pub const MAX_N: u64 = 128;

/// Bytes of request text counted per token in the prompt estimate.
const BYTES_PER_TOKEN: u64 = 4;

/// Bytes of prompt text (strings anywhere under the value; a number, as in a pre-tokenised
/// embeddings input, counts as one token's worth).
fn text_len(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::Number(_) => BYTES_PER_TOKEN,
        Value::Array(a) => a.iter().fold(0, |n, v| n.saturating_add(text_len(v))),
        Value::Object(o) => o.values().fold(0, |n, v| n.saturating_add(text_len(v))),
        _ => 0,
    }
}

/// An optional whole-number parameter in `1..=max`: absent or `null` is `None`; anything else
/// (negative, fractional, a string, too large) is `422 VALIDATION_FAILED` naming it.
fn count_param(body: &Value, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::validation(
                name,
                format!("{name} must be a whole number from 1 to {max}"),
            )),
        },
    }
}

/// What admission reserves for a request, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The prompt alone (≈ 4 bytes per token, at least 1).
    pub prompt: u64,
    /// The prompt plus the completion budget times `n`.
    pub total: u64,
    /// The body field a client lowers to make the estimate smaller (named by the `422` of a
    /// request whose estimate can never fit a tokens-per-minute limit).
    pub param: Option<&'static str>,
}

/// Tokens estimated at admission: the prompt (≈ 4 bytes per token; `messages`, `input`,
/// `prompt`, `instructions`) plus the completion budget (the largest of
/// `max_completion_tokens`, `max_tokens` and `max_output_tokens`, else `default_max_tokens` for
/// chat, completions and responses),
/// times `n`. Every number from the body is range-checked (`422` naming the field) and the
/// arithmetic saturates, so no request can make its own estimate wrap around.
pub fn estimate_tokens(
    body: &Value,
    chat: bool,
    default_max_tokens: u64,
) -> Result<Estimate, ApiError> {
    let mut prompt_field = None;
    let mut prompt_text: u64 = 0;
    for k in ["messages", "input", "prompt", "instructions"] {
        if let Some(v) = body.get(k) {
            prompt_field.get_or_insert(k);
            prompt_text = prompt_text.saturating_add(text_len(v));
        }
    }
    let prompt = prompt_text.div_ceil(BYTES_PER_TOKEN).max(1);
    let max_completion = count_param(body, "max_completion_tokens", MAX_TOKENS)?;
    let max_tokens = count_param(body, "max_tokens", MAX_TOKENS)?;
    // The Responses API's name for the completion budget (it has no `n`).
    let max_output = count_param(body, "max_output_tokens", MAX_TOKENS)?;
    let n = count_param(body, "n", MAX_N)?.unwrap_or(1);
    // The largest budget the body names (the first named on a tie).
    let budget = [
        ("max_completion_tokens", max_completion),
        ("max_tokens", max_tokens),
        ("max_output_tokens", max_output),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.map(|v| (v, name)))
    .fold(
        None,
        |best: Option<(u64, &'static str)>, (v, name)| match best {
            Some((b, _)) if b >= v => best,
            _ => Some((v, name)),
        },
    );
    let (completion, param) = match budget {
        Some((v, name)) => (v, Some(name)),
        None if chat => (default_max_tokens.min(MAX_TOKENS), Some("max_tokens")),
        None => (0, prompt_field),
    };
    Ok(Estimate {
        prompt,
        total: prompt.saturating_add(completion.saturating_mul(n)),
        param,
    })
}

/// Admission for one inference request. Errors are `422 VALIDATION_FAILED` for an out-of-range
/// number in the body (nothing reserved, no usage record) or for an estimate no per-minute limit
/// could ever admit, and `429 RATE_LIMITED` / `QUOTA_EXCEEDED` carrying `Retry-After`; those
/// decided by the limiter carry the rate-limit headers and their usage record is written here.
pub async fn admit(
    state: &AppState,
    caller: &Principal,
    route: &'static str,
    model: &str,
    body: &Value,
    info: &RequestInfo,
) -> Result<Meter, ApiError> {
    // Completions reserve a completion budget when the body names none (providers default it).
    let chat = matches!(route, "chat/completions" | "completions" | "responses");
    let est = estimate_tokens(body, chat, state.limits.config().default_max_tokens)?;
    let (prompt_estimate, estimate) = (est.prompt, est.total);
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
    let checks = super::checks_for(&state.limits, caller, estimate);
    let started = Instant::now();
    match super::decide(&state.limits, checks).await {
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
        Err(mut err) => {
            // A request too large for a per-minute limit ever to admit: name what to lower.
            if err.code == crate::error::ErrorCode::ValidationFailed {
                err.param = est.param.map(str::to_string);
            }
            let mut record = record;
            record.status = err.code.status().as_u16();
            record.outcome = match err.code {
                crate::error::ErrorCode::QuotaExceeded => "quota_exceeded",
                crate::error::ErrorCode::ValidationFailed => "too_large",
                _ => "rate_limited",
            };
            crate::usage::UsageQueue::send(permit, record);
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
    usage: Option<TokenUsage>,
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
    pub fn set_usage(&mut self, usage: Option<TokenUsage>) {
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
            "shutdown" => "shutdown",
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
        // Reported counts are the upstream's word: capped, so sums cannot overflow.
        let (prompt, completion, actual) = match self.usage {
            Some(u) => {
                let (p, c) = (
                    u.prompt_tokens.min(MAX_TOKENS),
                    u.completion_tokens.min(MAX_TOKENS),
                );
                (p, c, Some(p + c))
            }
            None if ok && self.chunks > 0 => {
                let c = self.chunks.min(MAX_TOKENS);
                (
                    self.prompt_estimate,
                    c,
                    Some(self.prompt_estimate.saturating_add(c)),
                )
            }
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
        crate::usage::UsageQueue::send(self.permit.take(), rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn est(body: Value, chat: bool) -> (u64, u64) {
        let e = estimate_tokens(&body, chat, 256).unwrap();
        (e.prompt, e.total)
    }

    #[test]
    fn estimates_prompt_and_completion() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "0123456789abcdef"}],
            "max_tokens": 100});
        let (p, total) = est(body, true);
        assert!(p >= 4 && total == p + 100, "{p} {total}");
        let body = json!({"model": "m", "messages": [], "n": 2});
        let (p, total) = est(body, true);
        assert_eq!(total, p + 512);
        let body = json!({"model": "e", "input": "hello world"});
        let (p, total) = est(body, false);
        assert_eq!(p, total);
    }

    #[test]
    fn out_of_range_numbers_are_refused_and_never_wrap() {
        // The values that used to wrap the estimate around to about one token.
        for (body, param) in [
            (json!({"max_tokens": u64::MAX}), "max_tokens"),
            (json!({"max_tokens": 1u64 << 63, "n": 2}), "max_tokens"),
            (json!({"max_tokens": 1u64 << 62, "n": 4}), "max_tokens"),
            (
                json!({"max_completion_tokens": u64::MAX}),
                "max_completion_tokens",
            ),
            (json!({"max_tokens": MAX_TOKENS + 1}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": 10.5}), "max_tokens"),
            (json!({"max_tokens": 1e300}), "max_tokens"),
            (json!({"max_tokens": "100"}), "max_tokens"),
            (json!({"n": 0}), "n"),
            (json!({"n": -2}), "n"),
            (json!({"n": MAX_N + 1}), "n"),
            (json!({"n": u64::MAX, "max_tokens": 2}), "n"),
        ] {
            let err = estimate_tokens(&body, true, 256).unwrap_err();
            assert_eq!(
                err.code,
                crate::error::ErrorCode::ValidationFailed,
                "{body}"
            );
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        // The largest accepted values give the largest estimate, without wrapping.
        let e = estimate_tokens(
            &json!({"messages": [], "max_tokens": MAX_TOKENS, "max_completion_tokens": 5, "n": MAX_N}),
            true,
            256,
        )
        .unwrap();
        assert_eq!(e.total, 1 + MAX_TOKENS * MAX_N);
        assert_eq!(e.param, Some("max_tokens"));
        // `null` is absent; a configured default budget beyond the ceiling is capped.
        let e = estimate_tokens(&json!({"max_tokens": null}), true, u64::MAX).unwrap();
        assert_eq!(e.total, 1 + MAX_TOKENS);
    }

    #[test]
    fn pre_tokenised_inputs_count() {
        // Token ids count one token each; strings 4 bytes per token.
        let ids: Vec<u64> = (0..400).collect();
        let (p, _) = est(json!({"input": [ids]}), false);
        assert_eq!(p, 400);
        let e = estimate_tokens(&json!({"input": "x"}), false, 256).unwrap();
        assert_eq!(e.param, Some("input"));
    }
}
