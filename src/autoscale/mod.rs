//! `callvisor autoscale`: keeps the call service's Railway replica count matched to its live
//! calls, between `MIN_REPLICAS` and `MAX_REPLICAS` (Railway has no horizontal autoscaling).
//!
//! One controller per environment, deployed as its own Railway service from this repository
//! (start command `exec ./bin/callvisor autoscale`); it never runs inside a call replica. Each
//! interval: read the replica count from Railway's API (`railway.rs`), sample the service's `/`
//! to see every replica (`observe.rs`), apply the rule (`decide.rs`, pure), log one line with its
//! inputs and reason, and change the count through the API when the rule says so (not in
//! `AUTOSCALE_DRY_RUN`). Its own `/` shows what it saw and decided, `/metrics` the same as gauges
//! and counters. API errors are logged, counted and retried next interval (a 429 waits for its
//! `Retry-After`); the call service only ever sees reads of its `/`.

pub mod config;
pub mod decide;
pub mod observe;
pub mod railway;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use config::AutoscaleConfig;
use decide::{decide, Action, Decision};
use observe::{Observation, Observer};
use railway::{ApiError, Railway};

type Labels = Vec<(String, String)>;

/// The controller's gauges and counters (`/metrics`).
#[derive(Clone, Default)]
struct Metrics {
    replicas_current: Gauge,
    replicas_desired: Gauge,
    observed_calls: Gauge,
    observed_replicas: Gauge,
    unseen_replicas: Gauge,
    bounced_calls: Counter,
    samples: Counter,
    samples_answered: Counter,
    decisions: Family<Labels, Counter>,
    api_errors: Family<Labels, Counter>,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("callvisor_autoscale");
        let m = self.clone();
        r.register(
            "replicas_current",
            "Replicas Railway runs for the call service",
            m.replicas_current,
        );
        r.register(
            "replicas_desired",
            "Replicas the rule asks for",
            m.replicas_desired,
        );
        r.register(
            "observed_calls",
            "Live calls on the non-draining replicas seen this interval",
            m.observed_calls,
        );
        r.register(
            "observed_replicas",
            "Non-draining replicas that answered this interval",
            m.observed_replicas,
        );
        r.register(
            "unseen_replicas",
            "Replicas Railway runs that no sample reached (counted as full)",
            m.unseen_replicas,
        );
        r.register(
            "bounced_calls",
            "Calls refused by full replicas, as seen between intervals",
            m.bounced_calls,
        );
        r.register("samples", "Reads of the call service's /", m.samples);
        r.register(
            "samples_answered",
            "Reads of the call service's / that answered",
            m.samples_answered,
        );
        r.register(
            "decisions",
            "Decisions, by action (hold, scale_out, scale_in)",
            m.decisions,
        );
        r.register(
            "api_errors",
            "Railway API errors, by kind (rate_limited, unreachable, rejected)",
            m.api_errors,
        );
        r
    }
}

/// What `/` shows.
#[derive(Debug, Clone, Serialize, Default)]
struct Status {
    mode: &'static str,
    dry_run: bool,
    target: String,
    service_id: String,
    min_replicas: u32,
    max_replicas: u32,
    current_replicas: Option<u32>,
    desired_replicas: Option<u32>,
    observation: Option<Observation>,
    last_decision: Option<StampedDecision>,
    /// The last change this controller made (or would have made, in a dry run).
    last_change: Option<StampedDecision>,
    last_api_error: Option<String>,
    last_api_error_at: Option<u64>,
    intervals: u64,
}

#[derive(Debug, Clone, Serialize)]
struct StampedDecision {
    /// Seconds since the Unix epoch.
    at: u64,
    #[serde(flatten)]
    decision: Decision,
    applied: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Controller {
    config: AutoscaleConfig,
    railway: Railway,
    observer: Observer,
    status: Arc<Mutex<Status>>,
    metrics: Metrics,
    last_change: Option<Instant>,
    backoff_until: Option<Instant>,
}

impl Controller {
    fn api_error(&mut self, what: &str, e: &ApiError) {
        log::warn!("autoscale: Railway API {what}: {e}");
        self.metrics
            .api_errors
            .get_or_create(&vec![("kind".into(), e.kind().into())])
            .inc();
        if let ApiError::RateLimited(wait) = e {
            self.backoff_until = Some(Instant::now() + *wait);
        }
        let mut status = self.status.lock().unwrap();
        status.last_api_error = Some(format!("{what}: {e}"));
        status.last_api_error_at = Some(unix_now());
    }

    async fn interval(&mut self) {
        self.status.lock().unwrap().intervals += 1;
        if let Some(until) = self.backoff_until {
            if Instant::now() < until {
                log::info!(
                    "autoscale: rate limited by Railway's API, {}s left: holding",
                    (until - Instant::now()).as_secs()
                );
                return;
            }
            self.backoff_until = None;
        }
        let (service, environment) = (&self.config.service_id, &self.config.environment_id);
        let regions = match self.railway.replicas(service, environment).await {
            Ok(regions) => regions,
            Err(e) => return self.api_error("reading the replica count", &e),
        };
        let current = regions.total();
        let observation = self.observer.observe(current).await;
        let now = Instant::now();
        let decision = decide(
            &self.config.policy,
            current,
            observation.load.as_ref(),
            self.last_change,
            now,
        );
        self.record(current, &observation, &decision);
        let replicas: Vec<String> = observation
            .replicas
            .iter()
            .filter(|r| r.age_intervals == 0)
            .map(|r| {
                format!(
                    "{}={}/{}{}",
                    r.replica,
                    r.active_calls,
                    r.limit,
                    if r.draining { " draining" } else { "" }
                )
            })
            .collect();
        let line = format!(
            "{:?} {} -> {} (desired {}): {}; {}/{} samples answered, seen [{}], regions {:?}",
            decision.action,
            decision.from,
            decision.to,
            decision.desired,
            decision.reason,
            observation.answered,
            observation.samples,
            replicas.join(" "),
            regions.0
        );
        let mut applied = false;
        if decision.action == Action::Hold {
            log::info!("autoscale: {line}");
        } else if self.config.dry_run {
            log::info!("autoscale: DRY RUN, nothing changed: {line}");
        } else {
            log::info!("autoscale: {line}");
            let message = format!(
                "callvisor autoscale: {} -> {} replicas ({})",
                decision.from, decision.to, decision.reason
            );
            match self
                .railway
                .set_replicas(
                    service,
                    environment,
                    &regions.with_total(decision.to),
                    &message,
                )
                .await
            {
                Ok(()) => {
                    applied = true;
                    self.last_change = Some(Instant::now());
                }
                Err(e) => self.api_error("changing the replica count", &e),
            }
        }
        let stamped = StampedDecision {
            at: unix_now(),
            decision: decision.clone(),
            applied,
        };
        let mut status = self.status.lock().unwrap();
        if decision.action != Action::Hold {
            status.last_change = Some(stamped.clone());
        }
        status.last_decision = Some(stamped);
    }

    fn record(&self, current: u32, observation: &Observation, decision: &Decision) {
        let m = &self.metrics;
        m.replicas_current.set(i64::from(current));
        m.replicas_desired.set(i64::from(decision.desired));
        m.samples.inc_by(u64::from(observation.samples));
        m.samples_answered.inc_by(u64::from(observation.answered));
        if let Some(load) = &observation.load {
            m.observed_calls.set(load.active_calls as i64);
            m.observed_replicas.set(i64::from(load.seen));
            m.unseen_replicas.set(i64::from(load.unseen));
            m.bounced_calls.inc_by(load.bounced);
        }
        let action = serde_json::to_value(decision.action).unwrap_or_default();
        m.decisions
            .get_or_create(&vec![(
                "action".into(),
                action.as_str().unwrap_or("?").into(),
            )])
            .inc();
        let mut status = self.status.lock().unwrap();
        status.current_replicas = Some(current);
        status.desired_replicas = Some(decision.desired);
        status.observation = Some(observation.clone());
    }
}

/// Runs the controller until SIGTERM or SIGINT. Exit 2: bad configuration; 1: cannot serve.
pub fn main() -> ExitCode {
    let config = match AutoscaleConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callvisor autoscale: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => crate::logging::LogFormat::Json,
        _ => crate::logging::LogFormat::Text,
    };
    crate::logging::init(format);
    log::info!(
        "callvisor autoscale {} starting: {config}",
        env!("CARGO_PKG_VERSION")
    );
    let result = actix_web::rt::System::new().block_on(run(config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("autoscale failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: AutoscaleConfig) -> std::io::Result<()> {
    let status = Arc::new(Mutex::new(Status {
        mode: "autoscale",
        dry_run: config.dry_run,
        target: config.target_url.clone(),
        service_id: config.service_id.clone(),
        min_replicas: config.policy.min,
        max_replicas: config.policy.max,
        ..Status::default()
    }));
    let metrics = Metrics::default();
    let registry = Arc::new(metrics.registry());
    let server = {
        let status = status.clone();
        HttpServer::new(move || {
            let (status, registry) = (status.clone(), registry.clone());
            App::new()
                .route(
                    "/",
                    web::get().to({
                        let status = status.clone();
                        move || {
                            let body = status.lock().unwrap().clone();
                            async move { HttpResponse::Ok().json(body) }
                        }
                    }),
                )
                .route(
                    "/metrics",
                    web::get().to(move || {
                        let mut text = String::new();
                        let _ = encode(&mut text, &registry);
                        async move {
                            HttpResponse::Ok()
                                .content_type(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(text)
                        }
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind((config.host, config.port))?
    };
    for addr in server.addrs() {
        log::info!("autoscale: listening on port {} (status at /)", addr.port());
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let interval = config.interval;
    let mut controller = Controller {
        railway: Railway::new(&config.api_url, config.token.clone()),
        observer: Observer::new(&config.target_url),
        config,
        status,
        metrics,
        last_change: None,
        backoff_until: None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => controller.interval().await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    log::info!("autoscale: stopping (signal)");
    handle.stop(true).await;
    // Nothing to drain: the next controller reads the count from Railway.
    Ok(())
}
