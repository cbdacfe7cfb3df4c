//! callvisor: a Twilio Media Streams call server.
//!
//! ```text
//!  Twilio ──POST /incoming-call──▶ http::webhook: the same TwiML on every replica
//!         ◀── TwiML (Connect/Stream, then a Redirect to the next try)
//!  Twilio ══WS /media-stream═══▶ http::stream ──Admit──▶ CallSupervisor (one per process)
//!                                    │ admitted             admits or refuses, counts
//!                                    ▼                      (refused: close 1013 / 1001)
//!                               CallSession actor (one per call) ── the call's app (HANDLER:
//!                                    │ bounded queues both ways       echo | bridge | openai)
//!                                    ├──▶ the app's upstream WebSocket (a bot, a model)
//!                                    └──▶ Twilio REST: hang up / transfer (closing ≠ hanging up)
//!  business ──POST /calls──▶ http::calls ──▶ Twilio REST: create the call, whose Url is the
//!                            webhook above with the call's agent and parameters (outbound)
//!  Twilio ──POST /call-status, /amd-status──▶ http::call_status: records of unanswered
//!                            calls; a machine hung up on or left a message (REST)
//!  ops ──GET / , /ready, /metrics──▶ read the supervisor's snapshot
//!  SIGTERM ──▶ drain: stop admitting, wait, hand remaining calls over, exit
//!
//!  `callvisor autoscale` (another service): samples the call service's `/` ──▶ decides ──▶
//!  Railway's GraphQL API sets the replica count (removed replicas drain as above)
//! ```
//!
//! - [`call::supervisor`]: the single owner of admission and counts.
//! - [`call::session`]: the actor that owns one call's WebSocket (and its app's upstream).
//! - [`call::handler`]: the app contract; [`call::handlers`]: the apps (echo, bridge, openai)
//!   behind one registry, `HANDLER`'s names.
//! - [`twilio`]: the wire formats (stream messages, TwiML, signatures) and REST call control.
//! - [`drain`]: SIGTERM handling: drain, hand-off, exit.
//! - [`client`]: the HTTP/WebSocket client of every connection callvisor opens (TCP_NODELAY).
//! - [`http`]: the routes; [`app`] wires them into a server; [`config`] reads the environment.
//! - [`webhooks`]: Standard Webhooks signatures on the requests callvisor sends to the business
//!   (per-call configuration, tools, call records).
//! - [`outbound`]: outbound calls (`POST /calls`): the request, Twilio's form, the URLs that
//!   carry a call's agent and parameters to whichever replica serves it.
//! - [`autoscale`]: the replica controller for Railway (`callvisor autoscale`).
//! - `fakes` (feature `callsim`): strict fakes of the outside services, shared by the tests
//!   and callsim's stand-ins.

#![forbid(unsafe_code)]

pub mod app;
pub mod autoscale;
pub mod call;
pub mod client;
pub mod config;
pub mod drain;
#[cfg(feature = "callsim")]
pub mod fakes;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod records;
pub mod twilio;
pub mod webhooks;
