//! The handlers a call can run.

pub mod echo;

pub use echo::EchoHandler;
