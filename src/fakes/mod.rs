//! The strict fakes of the outside services callvisor talks to, shared by the integration tests
//! and callsim's stand-ins: one module per service, so that what the tests prove and what a
//! local loop runs against are the same code.
//!
//! A fake is only worth what it refuses: each one checks what the real service checks (its
//! authentication, its request shapes, its limits, its documents) and answers the way the real
//! one does, with the real error codes. Where a fake has to decide something the service does
//! not document, its module says what it decided.
//!
//! Compiled with the `callsim` feature only: the Railway build of the server never carries them.

pub mod live;
pub mod realtime;
pub mod twilio_rest;
pub mod vad;
