//! `POST|GET /incoming-call`: the Twilio voice webhook.
//!
//! Every try answers `<Connect><Stream>` followed by what Twilio runs when the stream closes
//! without the call ending: a `<Redirect>` to the next try while redirects are left, else the
//! busy message. Admission happens where the call's stream lands, not here: behind Railway's
//! random load balancer the stream usually reaches another replica than this webhook, so this
//! replica's load says nothing about whether the call fits (see the README, "Scaling out").

use actix_web::{http::Method, web, HttpRequest, HttpResponse};

use crate::call::handlers::Route;
use crate::http::auth::{self, STREAM_TOKEN_TTL_SECS};
use crate::http::{public_base_url, stream_status, websocket_base, AppState};
use crate::outbound::{Detection, OutboundCall, AMD_PARAM, DIRECTION_PARAM};
use crate::twilio::signature::{unix_now, BOUND_PARAM, STREAM_TOKEN_PARAM};
use crate::twilio::twiml::{StreamVerb, TwimlResponse};

pub const PATH: &str = "/incoming-call";

/// What the webhook decided, before it is written as TwiML.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Connect,
    Busy,
}

/// What a caller hears when no agent answers the number called (and there is no default).
pub const NOT_IN_SERVICE: &str = "The number you have called is not in service.";

/// Decides the answer for try number `attempt` (1 = first) of a call.
///
/// A call may be redirected `max_redirects` times, so it gets `max_redirects + 1` tries; a try
/// past those (a forged or stale URL) hears the busy message at once.
pub fn decide(attempt: u32, max_redirects: u32) -> Answer {
    if attempt > max_redirects + 1 {
        Answer::Busy
    } else {
        Answer::Connect
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
    // A call placed through `POST /calls`: its agent, detection and parameters are in the URL
    // Twilio signed.
    let outbound = match OutboundCall::from_query(&query).transpose() {
        Ok(outbound) => outbound,
        Err(_) => return Err(bad_request("amd must be hangup or message")),
    };

    let config = &state.config;
    let answer = decide(attempt, config.max_redirects);
    let base = public_base_url(config, &req);
    let busy = |twiml: TwimlResponse| twiml.say(&config.busy_message).hangup();
    // What follows a stream that closes with the caller still there (refused, handed off): the
    // next try (through the load balancer, usually to another replica) while redirects are
    // left, else the busy message. An outbound call's next try keeps what its URL carries.
    let fallback = |twiml: TwimlResponse| {
        if attempt <= config.max_redirects {
            let mut query = outbound
                .as_ref()
                .map(OutboundCall::query)
                .unwrap_or_default();
            query.push(("attempt".into(), (attempt + 1).to_string()));
            let query = serde_urlencoded::to_string(&query).expect("strings encode");
            twiml.redirect(&format!("{base}{PATH}?{query}"))
        } else {
            busy(twiml)
        }
    };

    // Which of the app's agents answers this number (the voice agent's routing), if it has any;
    // an outbound call's agent is the one its request chose (`To` is the callee).
    let to = param("To").unwrap_or("");
    let route = match &outbound {
        Some(call) => call.agent.as_deref().map_or(Route::Any, Route::Agent),
        None => config.handler.route(to),
    };
    let agent = match route {
        Route::Any => None,
        Route::Agent(agent) => Some(agent),
        Route::NotInService => {
            log::warn!(call_sid = call_sid; "webhook: no agent answers To={to:?} and there is no default agent: not in service");
            state.metrics.webhook("not_in_service");
            let twiml = TwimlResponse::new().say(NOT_IN_SERVICE).hangup().build();
            return Ok(HttpResponse::Ok()
                .content_type("text/xml; charset=utf-8")
                .body(twiml));
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
            if let Some(call) = &outbound {
                parameters.push((DIRECTION_PARAM, "outbound"));
                if call.detection != Detection::Off {
                    parameters.push((AMD_PARAM, call.detection.as_str()));
                }
                parameters.extend(
                    call.parameters
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str())),
                );
            }
            // The agent travels in what the stream token signs; the parameter is what the
            // session replaces with the token's (and the only carrier without tokens).
            if let Some(agent) = agent {
                parameters.push((BOUND_PARAM, agent));
            }
            let token = state.auth.as_ref().map(|a| {
                a.tokens.mint_bound(
                    call_sid,
                    agent.unwrap_or(""),
                    unix_now() + STREAM_TOKEN_TTL_SECS,
                )
            });
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
        Answer::Busy => busy(TwimlResponse::new()),
    };
    state.metrics.webhook(match answer {
        // A retry is a call bounced by a full or draining replica, or handed off: its rate is
        // the pressure signal for scaling out.
        Answer::Connect if attempt > 1 => "retry",
        Answer::Connect => "connect",
        Answer::Busy => "busy",
    });
    log::info!(
        call_sid = call_sid;
        "webhook attempt={attempt}/{} answer={answer:?}{}",
        config.max_redirects + 1,
        if outbound.is_some() { " (outbound)" } else { "" }
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
    fn every_try_connects_until_the_tries_run_out() {
        for attempt in 1..=4 {
            assert_eq!(decide(attempt, 3), Answer::Connect);
        }
        assert_eq!(decide(5, 3), Answer::Busy);
        assert_eq!(decide(1, 0), Answer::Connect);
        assert_eq!(decide(2, 0), Answer::Busy);
        assert_eq!(decide(u32::MAX, 10), Answer::Busy);
    }
}
