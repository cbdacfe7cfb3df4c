//! Strict fakes of the outside services callvisor talks to, one per service, shared by the
//! tests and callsim's stand-ins: a fake that accepts anything proves nothing, so each refuses
//! what the real service refuses, in the real service's words.
//!
//! Built with the `callsim` feature (the default); the Railway build leaves them out.

pub mod realtime;
