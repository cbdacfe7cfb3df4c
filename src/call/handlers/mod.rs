//! The apps a call can run (`HANDLER`): echo (the default), bridge, openai.

pub mod bridge;
pub mod echo;
pub mod openai;

pub use bridge::{BridgeHandler, BridgeSettings};
pub use echo::EchoHandler;
pub use openai::OpenAiAgent;
