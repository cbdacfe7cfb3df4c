//! The apps a call can run (`HANDLER`), and their registry.
//!
//! An app is one module here: its settings read from the environment, what each call runs (a
//! [`CallHandler`](crate::call::handler::CallHandler) built by its factory), its own metrics,
//! and how it routes a call; it implements [`CallApp`] and names itself in an [`AppEntry`] called
//! `APP`. [`APPS`] lists every app, one line each: `HANDLER` accepts exactly those names, and its
//! error lists them. Adding an app is its file, its `mod` line and its line in [`APPS`]
//! (docs/apps.md, "Adding an app").

pub mod bridge;
pub mod echo;
pub mod openai;

pub use bridge::{BridgeHandler, BridgeSettings};
pub use echo::{EchoApp, EchoHandler};
pub use openai::OpenAiAgent;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::call::handler::HandlerFactory;
use crate::config::ConfigError;

/// Every app `HANDLER` can name, one line each. The first is the default (`HANDLER` unset).
pub static APPS: &[AppEntry] = &[
    echo::APP,             // every audio frame straight back (the default)
    bridge::APP,           // each call relayed to a bot that speaks Twilio's protocol
    openai::settings::APP, // a phone voice agent on OpenAI's Realtime API
];

/// One line of the registry: an app's `HANDLER` name and how its settings are read.
#[derive(Clone, Copy)]
pub struct AppEntry {
    /// `HANDLER`'s value; `/` and the startup line show it.
    pub name: &'static str,
    /// Reads the app's variables through `get` (which counts empty values as unset) once, at
    /// start. A bad value is the [`ConfigError`] naming its variable: callvisor exits 2 with it.
    pub from_env: fn(Lookup<'_>) -> Result<Arc<dyn CallApp>, ConfigError>,
}

/// The environment as apps read it: a variable's value, `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl fmt::Debug for AppEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The registry's entry named `name`.
pub fn find(name: &str) -> Option<&'static AppEntry> {
    APPS.iter().find(|app| app.name == name)
}

/// Every app's name, as `HANDLER`'s error lists them: `echo, bridge or openai`.
pub fn names() -> String {
    match APPS.split_last() {
        None => String::new(),
        Some((last, [])) => last.name.to_string(),
        Some((last, rest)) => {
            let rest: Vec<&str> = rest.iter().map(|app| app.name).collect();
            format!("{} or {}", rest.join(", "), last.name)
        }
    }
}

/// An app as the server runs it: its settings, read once at start (`Config::handler`), and what
/// the server asks of them. `Debug` must not print a secret (hold them as `SecretString`s).
pub trait CallApp: fmt::Debug + Send + Sync + Any {
    /// Its registry name (`HANDLER`'s value): return its [`AppEntry`]'s `name`.
    fn name(&self) -> &'static str;

    /// What the startup line shows after `handler=NAME`, in parentheses (nothing when empty).
    /// Never a secret: a URL shows its origin only (`crate::config::url_origin`).
    fn describe(&self) -> String {
        String::new()
    }

    /// Whether the app ends calls itself (hang-up, transfer) through Twilio's REST API: then
    /// callvisor refuses to start without REST credentials, since closing the stream alone would
    /// loop the call through its redirects (docs/apps.md). Every app but echo.
    fn needs_call_control(&self) -> bool {
        true
    }

    /// Who answers a call to `to` (the webhook's `To`), decided by the webhook before the call's
    /// stream exists. Only an app with several configurations by number overrides it.
    fn route(&self, _to: &str) -> Route<'_> {
        Route::Any
    }

    /// Registers the app's own metrics on the service's registry (names are prefixed
    /// `callvisor_`) and returns what builds each admitted call's handler. Called once, at start.
    fn handler_factory(self: Arc<Self>, registry: &mut Registry) -> HandlerFactory;
}

impl dyn CallApp {
    /// The app's own settings type, when it is `T` (tests, and code that knows the app).
    pub fn downcast_ref<T: CallApp>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }
}

/// The webhook's routing of a call by the number called ([`CallApp::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The app answers every number alike.
    Any,
    /// This agent answers: its name travels in what the stream token signs (`BOUND_PARAM`), so
    /// the call runs it on whichever replica the stream lands.
    Agent(&'a str),
    /// Nothing answers the number: the caller hears it is not in service, and the call ends.
    NotInService,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashSet;

    #[test]
    fn app_names_are_unique_lowercase_words_and_echo_is_the_default() {
        let mut seen = HashSet::new();
        for app in APPS {
            assert!(seen.insert(app.name), "{} is registered twice", app.name);
            assert!(
                !app.name.is_empty() && app.name.bytes().all(|b| b.is_ascii_lowercase()),
                "{:?}",
                app.name
            );
            assert_eq!(find(app.name).map(|a| a.name), Some(app.name));
        }
        assert_eq!(APPS[0].name, "echo");
        assert_eq!(
            Config::from_lookup(|_| None).unwrap().handler.name(),
            "echo"
        );
    }

    #[test]
    fn a_bad_handler_lists_every_registered_app_in_order() {
        let err =
            Config::from_lookup(|k| (k == "HANDLER").then(|| "nope".to_string())).unwrap_err();
        assert_eq!(err.variable, "HANDLER");
        // `echo, bridge or openai`: every name, in the registry's order.
        let expected = err.expected.to_string();
        let (rest, last) = expected.rsplit_once(" or ").expect("two apps or more");
        let mut listed: Vec<&str> = rest.split(", ").collect();
        listed.push(last);
        let registered: Vec<&str> = APPS.iter().map(|app| app.name).collect();
        assert_eq!(listed, registered);
        assert_eq!(
            err.to_string(),
            format!("invalid HANDLER=\"nope\": expected {}", names())
        );
    }

    /// Each entry reads its own app, which answers to the entry's name: with what each app of
    /// today requires set, `HANDLER=NAME` runs the app called NAME.
    #[test]
    fn each_entry_builds_the_app_it_names() {
        for app in APPS {
            let env = |k: &str| {
                let v = match k {
                    "HANDLER" => app.name,
                    "TWILIO_AUTH_TOKEN" => "tok",
                    "BRIDGE_URL" => "wss://bot.example.com/stream",
                    "OPENAI_API_KEY" => "sk-test",
                    _ => return None,
                };
                Some(v.to_string())
            };
            match Config::from_lookup(env) {
                Ok(config) => {
                    assert_eq!(config.handler.name(), app.name);
                    let line = config.to_string();
                    assert!(line.contains(&format!(" handler={}", app.name)), "{line}");
                    assert_eq!((app.from_env)(&env).unwrap().name(), app.name);
                }
                // An app that needs a variable this test does not set: HANDLER was accepted
                // and the app's own parsing ran.
                Err(e) => assert_ne!(e.variable, "HANDLER", "{}: {e}", app.name),
            }
        }
    }
}
