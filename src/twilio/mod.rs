//! Twilio's side of the wire: stream messages, TwiML, request signatures. Pure code, no I/O.

pub mod messages;
pub mod signature;
pub mod twiml;
