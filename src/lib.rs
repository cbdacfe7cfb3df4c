//! callvisor: a Twilio Media Streams call server.
//!
//! ```text
//!  Twilio ──POST /incoming-call──▶ http::webhook ──ask──▶ CallSupervisor (one per process)
//!         ◀── TwiML (Connect/Stream + Redirect fallback)      │ admits / refuses, counts
//!  Twilio ══WS /media-stream═══▶ http::stream ──Admit──▶ CallSupervisor
//!                                    │ admitted
//!                                    ▼
//!                               CallSession actor (one per call) ── CallHandler (echo)
//!  ops ──GET / , /ready──▶ read the supervisor's snapshot
//!  SIGTERM ──▶ drain: stop admitting, wait, hand remaining calls over, exit
//! ```
//!
//! - [`call::supervisor`]: the single owner of admission and counts.
//! - [`call::session`]: the actor that owns one call's WebSocket.
//! - [`twilio`]: the wire formats (stream messages, TwiML), pure code.
//! - [`drain`]: SIGTERM handling: drain, hand-off, exit.
//! - [`http`]: the routes; [`app`] wires them into a server; [`config`] reads the environment.

pub mod app;
pub mod call;
pub mod config;
pub mod drain;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod twilio;
