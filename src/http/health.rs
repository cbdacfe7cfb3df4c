//! `/` (Railway's health check, and load for an external autoscaler) and `/ready`.
//! Both read the supervisor's snapshot; neither is ever refused for load.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::http::AppState;

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    active_calls: usize,
    limit: usize,
    available: usize,
    draining: bool,
    calls_admitted: u64,
    calls_rejected: u64,
    calls_completed: u64,
    calls_handed_off: u64,
    replica: &'a str,
    version: &'static str,
    uptime_secs: u64,
    /// `twilio-signature` or `disabled`.
    auth: &'static str,
    /// The app calls run: its `HANDLER` name (`echo`, `bridge`, `openai`: `call::handlers::APPS`).
    handler: &'static str,
}

pub async fn health(state: web::Data<AppState>) -> actix_web::Result<HttpResponse> {
    let snap = state.snapshot().await?;
    Ok(HttpResponse::Ok().json(Health {
        status: if snap.draining { "draining" } else { "ok" },
        active_calls: snap.active_calls,
        limit: snap.limit,
        available: snap.available(),
        draining: snap.draining,
        calls_admitted: snap.calls_admitted,
        calls_rejected: snap.calls_rejected,
        calls_completed: snap.calls_completed,
        calls_handed_off: snap.calls_handed_off,
        replica: &state.config.replica,
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: snap.uptime_secs,
        auth: state.config.auth_mode(),
        handler: state.config.handler.name(),
    }))
}

/// 200 while this replica admits calls; 503 when it is full or draining.
pub async fn ready(state: web::Data<AppState>) -> actix_web::Result<HttpResponse> {
    let snap = state.snapshot().await?;
    Ok(if snap.admitting() {
        HttpResponse::Ok().body("ready\n")
    } else if snap.draining {
        HttpResponse::ServiceUnavailable().body("draining\n")
    } else {
        HttpResponse::ServiceUnavailable().body("at capacity\n")
    })
}
