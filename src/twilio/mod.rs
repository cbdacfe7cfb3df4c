//! Twilio's side of the wire: stream messages and TwiML. Pure code, no I/O.

pub mod messages;
pub mod twiml;
