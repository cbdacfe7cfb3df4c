//! Twilio's callbacks about outbound calls, signed like every Twilio request (a forged one is
//! 403):
//!
//! - `POST /call-status` (`StatusCallback`): counted by `CallStatus`; `in-progress` (the
//!   `answered` event) times the answer from the call's placing (`created` in the URL); a call
//!   that ended without ever being answered (`busy`, `no-answer`, `failed`, `canceled`) gets its
//!   `call.ended` record here, since no stream will make one.
//! - `POST /amd-status` (`AsyncAmdStatusCallback`): answering-machine detection's result. The
//!   replica that gets it acts on the call through Twilio's REST API, wherever the call's stream
//!   is: a machine in `hangup` mode is hung up on, in `message` mode left `voicemail_message`
//!   once its greeting has ended. The stream's own agent learns the result by reading the call
//!   from Twilio (`call/session/answered.rs`).
//!
//! Both answer 204 at once: the REST update runs on its own task.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::{auth, AppState};
use crate::outbound::{amd_action, Detection};
use crate::records::Unanswered;

pub const PATH: &str = "/call-status";
pub const AMD_PATH: &str = "/amd-status";

/// The request's form, checked against Twilio's signature, and its query.
type Signed = (Vec<(String, String)>, Vec<(String, String)>);

fn signed(req: &HttpRequest, body: &[u8], state: &AppState) -> actix_web::Result<Signed> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
        actix_web::error::ErrorBadRequest("body is not valid application/x-www-form-urlencoded\n")
    })?;
    auth::check_request(state, req, &form)?;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).map_err(|_| {
            actix_web::error::ErrorBadRequest("query string is not valid form encoding\n")
        })?;
    Ok((form, query))
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub async fn call_status(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (form, query) = signed(&req, &body, &state)?;
    let status = field(&form, "CallStatus").unwrap_or("");
    let call_sid = field(&form, "CallSid").unwrap_or("");
    const STATUSES: [&str; 9] = [
        "queued",
        "initiated",
        "ringing",
        "in-progress",
        "completed",
        "busy",
        "no-answer",
        "failed",
        "canceled",
    ];
    let label = STATUSES
        .into_iter()
        .find(|s| *s == status)
        .unwrap_or("other");
    let metrics = &state.metrics.outbound;
    metrics.status.get_or_create(&[("status", label)]).inc();
    let placed_ms = field(&query, "created").and_then(|ms| ms.parse::<u64>().ok());
    if status == "in-progress" {
        if let Some(placed) = placed_ms {
            let waited = crate::outbound::unix_ms().saturating_sub(placed);
            metrics.time_to_answer.observe(waited as f64 / 1000.0);
            log::info!(call_sid = call_sid; "outbound call answered {waited} ms after it was placed");
        }
    } else {
        log::info!(call_sid = call_sid; "outbound call {status}");
    }
    if let Some(recorder) = &state.recorder {
        let unanswered = Unanswered {
            call_sid,
            account_sid: field(&form, "AccountSid").unwrap_or(""),
            from: field(&form, "From"),
            to: field(&form, "To"),
            agent: field(&query, "agent"),
            placed_at: placed_ms
                .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
            status,
        };
        if let Some(reason) = recorder.unanswered(&unanswered) {
            log::info!(call_sid = call_sid; "outbound call not answered ({reason}): its call.ended record goes out");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

pub async fn amd_status(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (form, query) = signed(&req, &body, &state)?;
    let answered_by = field(&form, "AnsweredBy").unwrap_or("");
    let call_sid = field(&form, "CallSid").unwrap_or("").to_string();
    const ANSWERS: [&str; 7] = [
        "human",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
        "fax",
        "unknown",
    ];
    let label = ANSWERS
        .into_iter()
        .find(|a| *a == answered_by)
        .unwrap_or("other");
    state
        .metrics
        .outbound
        .answered_by
        .get_or_create(&[("answered_by", label)])
        .inc();
    let detection = field(&query, "mode")
        .and_then(Detection::parse)
        .unwrap_or(Detection::Off);
    let update = amd_action(detection, answered_by, field(&query, "message"));
    log::info!(call_sid = call_sid.as_str();
        "outbound call answered by {answered_by} (detection {}, after {} ms): {}",
        detection.as_str(),
        field(&form, "MachineDetectionDuration").unwrap_or("?"),
        update.as_ref().map_or("nothing to do", |u| u.label()));
    if let Some(update) = update {
        match state.control.clone() {
            Some(control) => {
                let account = field(&form, "AccountSid").unwrap_or("").to_string();
                // Logged and counted by `CallControl` (callvisor_call_control_total).
                actix_web::rt::spawn(async move {
                    control.update(&account, &call_sid, &update).await;
                });
            }
            None => log::error!(call_sid = call_sid.as_str();
                "cannot {} the machine: no Twilio REST credentials", update.label()),
        }
    }
    Ok(HttpResponse::NoContent().finish())
}
