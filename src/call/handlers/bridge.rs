//! `HANDLER=bridge`: every call relayed to an upstream bot that speaks Twilio's own Media
//! Streams protocol, so a bot written for Twilio runs unchanged behind callvisor.
//!
//! To the bot: `connected`, `start` (its `customParameters` without our `streamToken`), then
//! `media`, `dtmf` and `mark` exactly as Twilio sent them (the same bytes), and `stop` when the
//! caller hangs up. From the bot: `media`, `mark` and `clear` go to Twilio with the Twilio
//! stream's streamSid (whatever the bot wrote); `{"event":"hangup"}` and
//! `{"event":"transfer","to":"+1…"}` control the call through Twilio's REST API; anything else
//! is dropped, counted, and logged once per call.
//!
//! Ends: the bot closes with 1000 or says `hangup` → the call is hung up (REST). The bot cannot
//! be reached, or drops mid-call → the Twilio stream is closed 1011 `upstream unavailable`, so
//! Twilio runs the `<Redirect>` and another replica (which may reach its bot) takes the call.
//! Twilio's side ends → the bot gets `stop` (when Twilio sent one) and a close 1000; a hand-off
//! during a drain → the bot gets close 1001 `handoff` and no `stop`: the call goes on elsewhere,
//! with the same CallSid and `attempt` one higher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::Message;
use serde::Deserialize;

use prometheus_client::registry::Registry;

use crate::call::handler::{
    Call, CallEnd, CallHandler, EndReason, HandlerError, HandlerFactory, MediaChunk, UpstreamEvent,
    UpstreamRequest,
};
use crate::call::handlers::{AppEntry, CallApp};
use crate::config::{is_e164, parse_var, url_origin, valid_ws_url, ConfigError};
use crate::twilio::messages::{Start, TwilioFrame};
use crate::twilio::signature::STREAM_TOKEN_PARAM;

pub const ENV_BRIDGE_URL: &str = "BRIDGE_URL";
pub const ENV_BRIDGE_CONNECT_TIMEOUT_SECS: &str = "BRIDGE_CONNECT_TIMEOUT_SECS";
pub const DEFAULT_BRIDGE_CONNECT_TIMEOUT_SECS: u64 = 5;

/// Audio from Twilio kept while the bot's socket opens: 1 s of 20 ms frames. Older frames are
/// dropped first (the bot hears the most recent second).
const PENDING_MEDIA: usize = 50;

/// `HANDLER=bridge`.
pub const APP: AppEntry = AppEntry {
    name: "bridge",
    from_env: |get| Ok(Arc::new(BridgeSettings::from_env(get)?)),
};

/// What every bridged call shares: the app's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    /// `BRIDGE_URL`: `ws://` or `wss://` (its path and query may hold a credential).
    pub url: String,
    /// `BRIDGE_CONNECT_TIMEOUT_SECS`.
    pub connect_timeout: Duration,
}

impl BridgeSettings {
    /// `HANDLER=bridge`'s variables.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let url = parse_var(
            get,
            ENV_BRIDGE_URL,
            "a ws:// or wss:// URL of the bot",
            valid_ws_url,
        )?
        .ok_or(ConfigError {
            variable: ENV_BRIDGE_URL,
            value: String::new(),
            expected: "HANDLER=bridge relays every call to it; set a ws:// or wss:// URL".into(),
        })?;
        let connect_timeout = Duration::from_secs(
            parse_var(
                get,
                ENV_BRIDGE_CONNECT_TIMEOUT_SECS,
                "a whole number of seconds from 1 to 60",
                |v| v.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n)),
            )?
            .map_or(DEFAULT_BRIDGE_CONNECT_TIMEOUT_SECS, |v| v.parse().unwrap()),
        );
        Ok(BridgeSettings {
            url,
            connect_timeout,
        })
    }
}

impl CallApp for BridgeSettings {
    fn name(&self) -> &'static str {
        APP.name
    }

    /// The bot's origin only: its path and query may hold a credential.
    fn describe(&self) -> String {
        url_origin(&self.url).to_string()
    }

    /// The bridge's metrics are the service's `callvisor_upstream_*` (every upstream's).
    fn handler_factory(self: Arc<Self>, _: &mut Registry) -> HandlerFactory {
        Arc::new(move || Box::new(BridgeHandler::new(self.clone())))
    }
}

/// One call's relay.
pub struct BridgeHandler {
    settings: Arc<BridgeSettings>,
    open: bool,
    /// `connected` and `start`, sent first once the bot's socket is open.
    hello: Vec<String>,
    /// Twilio frames (media, dtmf, mark) that arrived before the bot's socket opened.
    pending: VecDeque<Message>,
    pending_dropped: u64,
    /// Frames from the bot that are not part of the protocol; logged once.
    ignored: u64,
    sequence: u64,
}

impl BridgeHandler {
    pub fn new(settings: Arc<BridgeSettings>) -> Self {
        BridgeHandler {
            settings,
            open: false,
            hello: Vec::new(),
            pending: VecDeque::new(),
            pending_dropped: 0,
            ignored: 0,
            sequence: 0,
        }
    }

    /// Relays the Twilio frame being handled, as Twilio sent it.
    fn relay(&mut self, call: &mut Call<'_>) {
        let Some(raw) = call.inbound().cloned() else {
            return;
        };
        let frame = Message::Text(raw);
        if self.open {
            call.send_upstream(frame);
        } else {
            if self.pending.len() == PENDING_MEDIA {
                self.pending.pop_front();
                self.pending_dropped += 1;
            }
            self.pending.push_back(frame);
        }
    }

    fn ignore(&mut self, call: &Call<'_>, what: &str) {
        self.ignored += 1;
        if self.ignored == 1 {
            log::warn!(call_sid = call.call_sid(); "bridge: ignoring what the bot sent: {what} (only media, mark, clear, hangup, transfer are relayed; logged once per call)");
        }
    }

    fn on_bot_frame(&mut self, text: &str, call: &mut Call<'_>) {
        let Ok(frame) = serde_json::from_str::<BotFrame>(text) else {
            return self.ignore(call, "a frame that is not a JSON event");
        };
        match frame.event.as_str() {
            "media" => match frame.media.and_then(|m| m.payload) {
                Some(payload) => call.media_base64(&payload),
                None => self.ignore(call, "media without a payload"),
            },
            "mark" => match frame.mark.and_then(|m| m.name) {
                Some(name) => call.mark(&name),
                None => self.ignore(call, "mark without a name"),
            },
            "clear" => call.clear(),
            "hangup" => call.hang_up(),
            "transfer" => match frame.to.filter(|to| is_e164(to)) {
                Some(to) => call.transfer(&to),
                None => self.ignore(call, "transfer without an E.164 `to` (+ and 2-15 digits)"),
            },
            _ => self.ignore(call, "an event callvisor does not relay"),
        }
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }
}

impl CallHandler for BridgeHandler {
    fn on_start(&mut self, start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        call.connect_upstream(UpstreamRequest {
            url: self.settings.url.clone(),
            headers: Vec::new(),
            timeout: self.settings.connect_timeout,
        });
        let mut start = start.clone();
        // The token proves the stream to us; the bot has no use for it.
        start.custom_parameters.remove(STREAM_TOKEN_PARAM);
        let connected = TwilioFrame::Connected {
            protocol: "Call",
            version: "1.0.0",
        };
        let start = TwilioFrame::Start {
            sequence_number: self.next_sequence(),
            stream_sid: call.stream_sid(),
            start: &start,
        };
        self.hello = vec![connected.to_json(), start.to_json()];
        Ok(())
    }

    fn on_media(&mut self, _: &MediaChunk<'_>, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.relay(call);
        Ok(())
    }

    fn on_dtmf(&mut self, _: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.relay(call);
        Ok(())
    }

    fn on_mark(&mut self, _: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.relay(call);
        Ok(())
    }

    fn on_upstream(
        &mut self,
        event: UpstreamEvent,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            UpstreamEvent::Open => {
                self.open = true;
                for hello in self.hello.drain(..) {
                    call.send_upstream_text(hello);
                }
                for frame in self.pending.drain(..) {
                    call.send_upstream(frame);
                }
                if self.pending_dropped > 0 {
                    log::info!(call_sid = call.call_sid(); "bridge: {} frames older than 1 s dropped while the bot's socket opened", self.pending_dropped);
                }
            }
            UpstreamEvent::Text(text) => match std::str::from_utf8(&text) {
                Ok(text) => self.on_bot_frame(text, call),
                Err(_) => self.ignore(call, "a text frame that is not UTF-8"),
            },
            UpstreamEvent::Binary(_) => self.ignore(call, "a binary frame"),
            UpstreamEvent::Closed { code: 1000, .. } => call.hang_up(),
            UpstreamEvent::Closed { code, reason } => {
                log::warn!(call_sid = call.call_sid(); "bridge: the bot's socket closed {code} {reason}");
                call.fail_over("upstream unavailable");
            }
            UpstreamEvent::Failed { reason: why, .. } => {
                log::warn!(call_sid = call.call_sid(); "bridge: the bot cannot be reached: {why}");
                call.fail_over("upstream unavailable");
            }
        }
        Ok(())
    }

    fn on_end(&mut self, end: &CallEnd, call: &mut Call<'_>) {
        if self.ignored > 0 {
            log::info!(call_sid = call.call_sid(); "bridge: {} frames from the bot were not part of the protocol and were dropped", self.ignored);
        }
        if end.handed_off() {
            // The call goes on on another replica, with another bot session: no `stop`.
            return call.close_upstream(1001, "handoff");
        }
        if end.reason == EndReason::Stop {
            // The `stop` being handled, as Twilio sent it; rebuilt only if it is not at hand.
            if let Some(raw) = call.inbound().cloned() {
                call.send_upstream(Message::Text(raw));
                return call.close_upstream(1000, "");
            }
            let stop = TwilioFrame::Stop {
                sequence_number: self.next_sequence(),
                stream_sid: call.stream_sid(),
                stop: crate::twilio::messages::Stop {
                    account_sid: String::new(),
                    call_sid: call.call_sid().to_string(),
                },
            };
            call.send_upstream_text(stop.to_json());
        }
        call.close_upstream(1000, "");
    }
}

/// What a bot may send: Twilio's server events plus the two call-control extensions.
#[derive(Deserialize)]
struct BotFrame {
    event: String,
    #[serde(default)]
    media: Option<BotMedia>,
    #[serde(default)]
    mark: Option<BotMark>,
    #[serde(default)]
    to: Option<String>,
}

#[derive(Deserialize)]
struct BotMedia {
    payload: Option<String>,
}

#[derive(Deserialize)]
struct BotMark {
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: std::collections::HashMap<&str, &str> = vars.iter().copied().collect();
        Config::from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }

    fn bridge(config: &Config) -> &BridgeSettings {
        config.handler.downcast_ref().expect("HANDLER=bridge")
    }

    #[test]
    fn reads_every_bridge_variable() {
        let c = parse(&[
            ("HANDLER", "bridge"),
            ("BRIDGE_URL", "ws://bot.test/stream"),
            ("BRIDGE_CONNECT_TIMEOUT_SECS", "9"),
            ("TWILIO_AUTH_TOKEN", "tok"),
        ])
        .unwrap();
        assert_eq!(
            bridge(&c),
            &BridgeSettings {
                url: "ws://bot.test/stream".into(),
                connect_timeout: Duration::from_secs(9),
            }
        );
    }

    #[test]
    fn a_bridge_needs_its_url_and_call_control_and_never_shows_its_query() {
        let creds = ("TWILIO_AUTH_TOKEN", "tok");
        let c = parse(&[
            ("HANDLER", "bridge"),
            ("BRIDGE_URL", "wss://bot.example.com/stream?key=s3cret"),
            creds,
        ])
        .unwrap();
        assert_eq!(
            bridge(&c),
            &BridgeSettings {
                url: "wss://bot.example.com/stream?key=s3cret".into(),
                connect_timeout: Duration::from_secs(5)
            }
        );
        let line = c.to_string();
        assert!(
            line.contains("handler=bridge(wss://bot.example.com)"),
            "{line}"
        );
        assert!(!line.contains("s3cret") && !line.contains("tok "), "{line}");
        for (vars, variable) in [
            (vec![("HANDLER", "bridge"), creds], "BRIDGE_URL"),
            (
                vec![("HANDLER", "bridge"), ("BRIDGE_URL", "http://bot"), creds],
                "BRIDGE_URL",
            ),
            (
                vec![
                    ("HANDLER", "bridge"),
                    ("BRIDGE_URL", "ws://bot"),
                    ("BRIDGE_CONNECT_TIMEOUT_SECS", "0"),
                    creds,
                ],
                "BRIDGE_CONNECT_TIMEOUT_SECS",
            ),
            (
                vec![("HANDLER", "bridge"), ("BRIDGE_URL", "ws://bot")],
                "TWILIO_API_KEY_SID",
            ),
        ] {
            let err = parse(&vars).unwrap_err();
            assert_eq!(err.variable, variable, "{vars:?}: {err}");
        }
    }

    #[test]
    fn transfers_only_go_to_e164_numbers() {
        assert!(is_e164("+14155550123"));
        assert!(is_e164("+442071838750"));
        for bad in [
            "14155550123",
            "+0123",
            "+1",
            "+1415555012345678",
            "+1-415-555",
            "sip:x",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
