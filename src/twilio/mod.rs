//! Twilio's side of the wire: stream messages, TwiML, request signatures (pure code, no I/O),
//! and the REST API's call control (`rest.rs`, the one module here that talks to Twilio).

pub mod messages;
pub mod rest;
pub mod signature;
pub mod twiml;
