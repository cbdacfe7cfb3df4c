//! The apps a call can run (`HANDLER`): echo (the default) and bridge.

pub mod bridge;
pub mod echo;

pub use bridge::{BridgeHandler, BridgeSettings};
pub use echo::EchoHandler;
