//! `GET /metrics`: Prometheus exposition. Gauges are refreshed from the supervisor's snapshot
//! at scrape time; counters are live atomics.

use actix_web::{web, HttpResponse};

use crate::http::AppState;

pub async fn metrics(state: web::Data<AppState>) -> actix_web::Result<HttpResponse> {
    let snap = state.snapshot().await?;
    let m = &state.metrics;
    m.calls_active.set(snap.active_calls as i64);
    m.calls_limit.set(snap.limit as i64);
    m.draining.set(i64::from(snap.draining));
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode()))
}
