//! `POST|GET /incoming-call`: the Twilio voice webhook.
//!
//! Admitting: `<Connect><Stream>` then a `<Redirect>` that Twilio runs if the stream closes
//! (refused, drained). Full or draining: only the `<Redirect>`, so the load balancer takes the
//! retry to another replica. Out of redirects: the busy message.

use actix_web::{http::Method, web, HttpRequest, HttpResponse};

use crate::http::auth::{self, STREAM_TOKEN_TTL_SECS};
use crate::http::{public_base_url, stream_status, websocket_base, AppState};
use crate::twilio::signature::{unix_now, STREAM_TOKEN_PARAM};
use crate::twilio::twiml::{StreamVerb, TwimlResponse};

pub const PATH: &str = "/incoming-call";

/// What the webhook decided, before it is written as TwiML.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Connect,
    Redirect,
    Busy,
}

/// Decides the answer for try number `attempt` (1 = first) of a call.
///
/// A call may be redirected `max_redirects` times, so it gets `max_redirects + 1` tries; the busy
/// message comes from the last try that cannot place it, without spending another redirect.
pub fn decide(attempt: u32, max_redirects: u32, admitting: bool) -> Answer {
    let last_try = attempt > max_redirects;
    if attempt > max_redirects + 1 {
        Answer::Busy
    } else if admitting {
        Answer::Connect
    } else if last_try {
        Answer::Busy
    } else {
        Answer::Redirect
    }
}

pub async fn incoming_call(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|_| bad_request("query string is not valid form encoding"))?;
    let form: Vec<(String, String)> = if req.method() == Method::POST {
        serde_urlencoded::from_bytes(&body)
            .map_err(|_| bad_request("body is not valid application/x-www-form-urlencoded"))?
    } else {
        Vec::new()
    };
    // A GET is signed over its URL alone; a POST over its URL and its form.
    if let Err(e) = auth::check_request(&state, &req, &form) {
        state.metrics.webhook("forbidden");
        return Err(e.into());
    }
    let params = if req.method() == Method::POST {
        form
    } else {
        query.clone()
    };
    let attempt = match query.iter().find(|(k, _)| k == "attempt") {
        None => 1,
        Some((_, v)) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(bad_request("attempt must be a whole number >= 1")),
        },
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let call_sid = param("CallSid").unwrap_or("");

    let snap = state.snapshot().await?;
    let config = &state.config;
    let answer = decide(attempt, config.max_redirects, snap.admitting());
    let base = public_base_url(config, &req);
    let busy = |twiml: TwimlResponse| twiml.say(&config.busy_message).hangup();
    // What follows a try that cannot place the call: the next try (through the load balancer,
    // usually on another replica) while bounces are left, else the busy message.
    let fallback = |twiml: TwimlResponse| {
        if attempt <= config.max_redirects {
            twiml.redirect(&format!("{base}{PATH}?attempt={}", attempt + 1))
        } else {
            busy(twiml)
        }
    };

    let twiml = match answer {
        Answer::Connect => {
            let stream_url = format!("{}/media-stream", websocket_base(&base));
            let status_callback = format!("{base}{}", stream_status::PATH);
            let attempt_text = attempt.to_string();
            let mut parameters: Vec<(&str, &str)> = ["CallSid", "From", "To"]
                .into_iter()
                .filter_map(|name| param(name).map(|v| (name, v)))
                .collect();
            parameters.push(("attempt", &attempt_text));
            let token = state
                .auth
                .as_ref()
                .map(|a| a.tokens.mint(call_sid, unix_now() + STREAM_TOKEN_TTL_SECS));
            if let Some(token) = &token {
                parameters.push((STREAM_TOKEN_PARAM, token));
            }
            let twiml = TwimlResponse::new().connect_stream(&StreamVerb {
                url: &stream_url,
                status_callback: Some(&status_callback),
                parameters: &parameters,
            });
            // Runs only if the stream closes while the caller is still there.
            fallback(twiml)
        }
        Answer::Redirect => fallback(TwimlResponse::new()),
        Answer::Busy => busy(TwimlResponse::new()),
    };
    state.metrics.webhook(match answer {
        Answer::Connect => "connect",
        Answer::Redirect => "redirect",
        Answer::Busy => "busy",
    });
    log::info!(
        call_sid = call_sid;
        "webhook attempt={attempt} answer={answer:?} active={}/{}",
        snap.active_calls,
        snap.limit
    );
    Ok(HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body(twiml.build()))
}

fn bad_request(reason: &'static str) -> actix_web::Error {
    actix_web::error::InternalError::from_response(
        reason,
        HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body(format!("{reason}\n")),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_try_connects_when_admitting() {
        for attempt in 1..=4 {
            assert_eq!(decide(attempt, 3, true), Answer::Connect);
        }
    }

    #[test]
    fn a_full_replica_bounces_until_the_last_try_then_says_busy() {
        assert_eq!(decide(1, 3, false), Answer::Redirect);
        assert_eq!(decide(3, 3, false), Answer::Redirect);
        assert_eq!(decide(4, 3, false), Answer::Busy);
        assert_eq!(decide(1, 0, false), Answer::Busy);
    }

    #[test]
    fn an_attempt_past_every_try_is_busy_even_when_admitting() {
        assert_eq!(decide(5, 3, true), Answer::Busy);
    }
}
