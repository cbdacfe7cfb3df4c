//! `POST /calls`: callvisor's own API, which places an outbound call through Twilio's REST API
//! (docs/apps.md, *Outbound calls*).
//!
//! - Without `API_TOKEN` the route answers 404, as if it did not exist: it is never open.
//! - `Authorization: Bearer <API_TOKEN>`, compared in constant time; a missing or wrong one is
//!   401 with a JSON error (before the body is read).
//! - The body, every field checked (`outbound::request`): 422 `{"error", "field"}`.
//! - Twilio's *create a call*: 201 `{"call_sid", "status"}`. Twilio's 429 (the account's calls
//!   per second: nothing was created) is retried with a doubling, jittered delay for up to
//!   `OUTBOUND_TIMEOUT_SECS`, then answered 503. Any other refusal from Twilio is a 502 with its
//!   code and message. A request that got no answer (or a 5xx that is not Twilio's JSON) is
//!   **not** retried: the call may exist, and a second request would ring the callee twice; it
//!   is a 502 that says so.

use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::http::{public_base_url, AppState};
use crate::outbound::metrics::OutboundMetrics;
use crate::outbound::{request, unix_ms};
use crate::twilio::rest::{CreateFailure, CreatedCall};

pub const PATH: &str = "/calls";
/// The first wait after a 429; each next one doubles (less a random part of up to half).
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(2);

pub async fn place_call(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(api_token) = &state.config.outbound.api_token else {
        return HttpResponse::NotFound().finish();
    };
    if !bearer_matches(&req, api_token.expose_secret()) {
        log::warn!(
            "401 POST {PATH}: missing or wrong bearer token, peer={}",
            req.connection_info().realip_remote_addr().unwrap_or("?")
        );
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .json(json!({"error": "missing or wrong bearer token (Authorization: Bearer <API_TOKEN>)"}));
    }
    let call = match request::parse(&body, state.config.handler.as_ref()) {
        Ok(call) => call,
        Err(invalid) => {
            return HttpResponse::UnprocessableEntity()
                .json(json!({"error": invalid.error, "field": invalid.field}))
        }
    };
    let (Some(control), Some(account)) = (&state.control, &state.config.twilio_account_sid) else {
        // Not reached: the configuration requires both with API_TOKEN.
        return HttpResponse::ServiceUnavailable()
            .json(json!({"error": "no Twilio REST credentials or TWILIO_ACCOUNT_SID"}));
    };
    let base = public_base_url(&state.config, &req);
    let form = call.twilio_form(&base, unix_ms());
    let metrics = &state.metrics.outbound;
    let deadline = Instant::now() + state.config.outbound.timeout;
    let mut wait = FIRST_RETRY;
    let outcome = loop {
        match control.create_call(account, &form).await {
            Err(failure) if failure.is_rate_limit() => {
                let next = wait.mul_f64(1.0 - 0.5 * jitter());
                if Instant::now() + next >= deadline {
                    break Err(failure);
                }
                metrics.rate_limited_retries.inc();
                log::info!(
                    "POST {PATH}: Twilio answered 429 (calls per second): retrying in {} ms",
                    next.as_millis()
                );
                actix_web::rt::time::sleep(next).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
            other => break other,
        }
    };
    answer(outcome, &call, metrics)
}

/// The API's answer to Twilio's, counted and logged.
fn answer(
    outcome: Result<CreatedCall, CreateFailure>,
    call: &request::PlaceCall,
    metrics: &OutboundMetrics,
) -> HttpResponse {
    let agent = call.outbound.agent.as_deref().unwrap_or("-");
    match outcome {
        Ok(created) => {
            metrics.call("created".into());
            log::info!(call_sid = created.sid.as_str();
                "outbound call placed: to={} from={} agent={agent} machine_detection={} status={}",
                call.to, call.from, call.outbound.detection.as_str(), created.status);
            HttpResponse::Created().json(json!({"call_sid": created.sid, "status": created.status}))
        }
        Err(failure @ CreateFailure::Refused { status: 429, .. }) => {
            metrics.call("rate_limited".into());
            log::warn!("outbound call to {} not placed: Twilio still answers 429 (calls per second) after the retries", call.to);
            let CreateFailure::Refused { code, message, .. } = failure else {
                unreachable!("matched above")
            };
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "1"))
                .json(json!({
                    "error": "Twilio is limiting the account's calls per second (429): try again",
                    "code": code,
                    "message": message,
                }))
        }
        Err(CreateFailure::Refused {
            status,
            code,
            message,
        }) => {
            metrics.call(OutboundMetrics::failure_outcome(code));
            log::warn!("outbound call to {} not placed: Twilio answered HTTP {status}, code {code:?}: {message}", call.to);
            HttpResponse::BadGateway().json(json!({
                "error": "Twilio refused the call",
                "code": code,
                "message": message,
                "status": status,
            }))
        }
        Err(CreateFailure::Unknown(why)) => {
            metrics.call(OutboundMetrics::failure_outcome(None));
            log::error!("outbound call to {}: no answer from Twilio ({why}); the call may or may not have been placed, and is not retried", call.to);
            HttpResponse::BadGateway().json(json!({
                "error": format!("no answer from Twilio ({why}): the call may or may not have been placed; it was not retried"),
                "code": null,
                "message": null,
            }))
        }
    }
}

/// `Authorization: Bearer <token>`, compared in constant time (the length of the token may show).
fn bearer_matches(req: &HttpRequest, token: &str) -> bool {
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// A number in 0..1, different each call (SipHash with the process's random keys).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
