//! Builds the HTTP server: binds the listener (port 0 allowed, for tests), starts the
//! supervisor, wires the routes.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use actix::Actor;
use actix_web::{dev::Server, web, App, HttpServer};

use crate::call::handler::HandlerFactory;
use crate::call::supervisor::CallSupervisor;
use crate::config::Config;
use crate::http::auth::TwilioAuth;
use crate::http::{
    call_status, calls, health, metrics, socket, stream, stream_status, webhook, AppState,
};
use crate::metrics::Metrics;
use crate::records::{Deliveries, Recorder};
use crate::twilio::rest::CallControl;

/// A bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    supervisor: actix::Addr<CallSupervisor>,
    records: Option<Deliveries>,
}

impl Application {
    /// Binds `config.host:config.port` and prepares the server with the app `HANDLER` names.
    /// Must run inside an actix system.
    pub fn build(config: Config) -> std::io::Result<Self> {
        // The app's own metrics join the service's registry before it is shared.
        let (metrics, handler) =
            Metrics::new_with(|registry| config.handler.clone().handler_factory(registry));
        Self::build_with(config, handler, metrics)
    }

    /// [`Application::build`] with another call handler: each admitted call gets its own
    /// instance from `handler`.
    pub fn build_with_handler(config: Config, handler: HandlerFactory) -> std::io::Result<Self> {
        Self::build_with(config, handler, Metrics::new())
    }

    fn build_with(
        config: Config,
        handler: HandlerFactory,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let supervisor = CallSupervisor::new(config.limit_concurrency, metrics.clone()).start();
        let auth = config
            .twilio_auth_token
            .as_ref()
            .map(|token| Arc::new(TwilioAuth::new(token)));
        if auth.is_none() {
            log::warn!(
                "TWILIO_AUTH_TOKEN is not set: /incoming-call and /media-stream are open to anyone"
            );
            if config.handler.needs_call_control() {
                log::warn!(
                    "HANDLER={} without TWILIO_AUTH_TOKEN: anyone can open a stream claiming any \
                     CallSid, and the app's hang-ups and transfers act on that CallSid",
                    config.handler.name()
                );
            }
        }
        let control = config.rest_credentials().map(|credentials| {
            CallControl::new(
                &config.twilio_api_base_url,
                credentials,
                config.twilio_account_sid.clone(),
                metrics.clone(),
            )
        });
        let records = match &config.records {
            Some(settings) => Some(
                Deliveries::start(settings.delivery.clone(), metrics.clone()).map_err(|e| {
                    std::io::Error::other(format!(
                        "{}={:?}: the records spool cannot be used: {e}",
                        crate::records::ENV_CALL_EVENTS_SPOOL_DIR,
                        settings
                            .delivery
                            .spool_dir
                            .as_deref()
                            .unwrap_or(Path::new("")),
                    ))
                })?,
            ),
            None => None,
        };
        let recorder = records
            .as_ref()
            .zip(config.records.as_ref())
            .map(|(d, s)| Recorder {
                deliveries: d.clone(),
                replica: config.replica.clone(),
                app: config.handler.name(),
                transcript_cap: s.transcript_cap,
            });
        let state = AppState {
            recorder,
            control,
            metrics,
            auth,
            config: Arc::new(config.clone()),
            supervisor: supervisor.clone(),
            handler,
        };
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                // Twilio's webhook bodies are a few hundred bytes.
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route("/", web::get().to(health::health))
                .route("/", web::head().to(health::health))
                .route("/ready", web::get().to(health::ready))
                .route("/metrics", web::get().to(metrics::metrics))
                .route(
                    stream_status::PATH,
                    web::post().to(stream_status::stream_status),
                )
                .route(calls::PATH, web::post().to(calls::place_call))
                .route(call_status::PATH, web::post().to(call_status::call_status))
                .route(
                    call_status::AMD_PATH,
                    web::post().to(call_status::amd_status),
                )
                .route(webhook::PATH, web::post().to(webhook::incoming_call))
                .route(webhook::PATH, web::get().to(webhook::incoming_call))
                .route(stream::PATH, web::get().to(stream::media_stream))
        })
        // Phone calls are long-lived connections; actix's default cap is per worker.
        .max_connections(100_000)
        // A 20 ms audio frame must leave at once: Nagle's algorithm would hold a small write
        // until the previous one is acknowledged, which delayed ACKs stretch to ~40 ms.
        .tcp_nodelay(true)
        .on_connect(|io, _| socket::tune(io))
        // Signals belong to the drain (src/drain.rs), not to actix's own graceful stop.
        .disable_signals()
        // After a drain only closing sockets remain: give them time to flush their close frames.
        .shutdown_timeout(1)
        .backlog(4096);
        if let Some(workers) = config.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Application {
            port,
            server,
            supervisor,
            records,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn supervisor(&self) -> actix::Addr<CallSupervisor> {
        self.supervisor.clone()
    }

    /// The call records' delivery (`CALL_EVENTS_URL`), for the drain to flush.
    pub fn records(&self) -> Option<Deliveries> {
        self.records.clone()
    }

    /// Stops the server from outside (after a drain).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
