//! Calls: the per-replica [`supervisor::CallSupervisor`] that admits them, the per-call
//! [`session::CallSession`] actor that owns each stream, and the handlers that decide what a
//! call does with its audio.

pub mod handler;
pub mod handlers;
pub mod outbound;
pub mod session;
pub mod supervisor;
pub mod upstream;
