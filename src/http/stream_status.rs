//! `POST /stream-status`: receives `<Stream statusCallback>` events. A `stream-error` is the only
//! place Twilio explains why a stream failed to start, so it is logged at WARN with its text.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::{auth, AppState};

pub const PATH: &str = "/stream-status";

pub async fn stream_status(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        actix_web::error::ErrorBadRequest("body is not valid application/x-www-form-urlencoded\n")
    })?;
    auth::check_request(&state, &req, &form)?;
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let (call_sid, stream_sid, event) =
        (field("CallSid"), field("StreamSid"), field("StreamEvent"));
    // Bounded label values: Twilio's three events, anything else counted as "other".
    let label = match event {
        "stream-started" | "stream-stopped" | "stream-error" => event.to_string(),
        _ => "other".to_string(),
    };
    state
        .metrics
        .stream_status_events
        .get_or_create(&[("event", label)])
        .inc();
    if event == "stream-error" {
        log::warn!(
            call_sid = call_sid, stream_sid = stream_sid;
            "twilio stream-error: {}", field("StreamError")
        );
    } else {
        log::info!(call_sid = call_sid, stream_sid = stream_sid; "twilio {event}");
    }
    Ok(HttpResponse::NoContent().finish())
}
