//! Black-box tests: the real server on port 0, driven over real sockets as Twilio would.

#![forbid(unsafe_code)]

mod agent;
mod agents_file;
mod apps;
mod auth;
mod autoscale;
mod backpressure;
mod bad_input;
mod bot;
mod bridge;
mod call_control;
mod call_flow;
mod callsim;
mod capacity;
mod config_errors;
mod disconnects;
mod drain;
mod fake_railway;
mod helpers;
mod live;
#[cfg(target_os = "linux")]
mod observability;
mod outbound;
mod recordings;
mod records;
mod routing;
mod webhook;
