//! Typed configuration, read once at start from the environment (and `.env` when present).
//!
//! Every variable has an `ENV_*` name beside its `DEFAULT_*` value and one check; the parser takes
//! a lookup function so tests can feed it a map. A bad value is a startup error naming the variable.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::call::handlers::openai::agents::{
    Agent, Agents, AgentsError, Destination, TransferTarget,
};
use crate::logging::LogFormat;
use crate::webhooks::WebhookSecret;

pub const ENV_PORT: &str = "PORT";
pub const DEFAULT_PORT: u16 = 8080;
pub const ENV_HOST: &str = "HOST";
pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const ENV_LIMIT_CONCURRENCY: &str = "LIMIT_CONCURRENCY";
pub const DEFAULT_LIMIT_CONCURRENCY: usize = 100;
pub const ENV_PUBLIC_URL: &str = "PUBLIC_URL";
pub const ENV_RAILWAY_PUBLIC_DOMAIN: &str = "RAILWAY_PUBLIC_DOMAIN";
pub const ENV_MAX_REDIRECTS: &str = "MAX_REDIRECTS";
/// 9 tries: a call that fits somewhere is refused with probability f^9 when a fraction f of the
/// replicas is full (README, "Scaling out"); Twilio allows 10.
pub const DEFAULT_MAX_REDIRECTS: u32 = 8;
/// Twilio follows at most 10 `<Redirect>`s per call (error 11215).
pub const TWILIO_MAX_REDIRECTS: u32 = 10;
pub const ENV_START_TIMEOUT_SECS: &str = "START_TIMEOUT_SECS";
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 10;
pub const ENV_IDLE_TIMEOUT_SECS: &str = "IDLE_TIMEOUT_SECS";
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
pub const ENV_BUSY_MESSAGE: &str = "BUSY_MESSAGE";
pub const DEFAULT_BUSY_MESSAGE: &str =
    "Sorry, all of our lines are busy right now. Please call again in a few minutes.";
pub const ENV_WORKERS: &str = "WORKERS";
pub const ENV_RAILWAY_REPLICA_ID: &str = "RAILWAY_REPLICA_ID";
pub const ENV_DRAIN_TIMEOUT_SECS: &str = "DRAIN_TIMEOUT_SECS";
pub const ENV_RAILWAY_DEPLOYMENT_DRAINING_SECONDS: &str = "RAILWAY_DEPLOYMENT_DRAINING_SECONDS";
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// Handed-off calls need this long to close before Railway's SIGKILL lands.
pub const DRAIN_MARGIN_SECS: u64 = 2;
pub const ENV_LOG_FORMAT: &str = "LOG_FORMAT";
pub const ENV_TWILIO_AUTH_TOKEN: &str = "TWILIO_AUTH_TOKEN";
pub const ENV_OUTBOUND_BUFFER_KIB: &str = "OUTBOUND_BUFFER_KIB";
pub const ENV_TWILIO_API_BASE_URL: &str = "TWILIO_API_BASE_URL";
pub const ENV_TWILIO_ACCOUNT_SID: &str = "TWILIO_ACCOUNT_SID";
pub const ENV_TWILIO_API_KEY_SID: &str = "TWILIO_API_KEY_SID";
pub const ENV_TWILIO_API_KEY_SECRET: &str = "TWILIO_API_KEY_SECRET";
pub const ENV_HANDLER: &str = "HANDLER";
pub const ENV_BRIDGE_URL: &str = "BRIDGE_URL";
pub const ENV_BRIDGE_CONNECT_TIMEOUT_SECS: &str = "BRIDGE_CONNECT_TIMEOUT_SECS";
pub const DEFAULT_BRIDGE_CONNECT_TIMEOUT_SECS: u64 = 5;

pub const ENV_OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const ENV_OPENAI_REALTIME_URL: &str = "OPENAI_REALTIME_URL";
pub const DEFAULT_OPENAI_REALTIME_URL: &str = "wss://api.openai.com/v1/realtime";
pub const ENV_OPENAI_MODEL: &str = "OPENAI_MODEL";
/// `gpt-realtime` shuts down on 2027-01-20 (OpenAI's deprecations page); this is its replacement.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-realtime-2.1";
pub const ENV_AGENT_INSTRUCTIONS: &str = "AGENT_INSTRUCTIONS";
pub const ENV_AGENT_INSTRUCTIONS_FILE: &str = "AGENT_INSTRUCTIONS_FILE";
pub const DEFAULT_AGENT_INSTRUCTIONS: &str = "You are a friendly, concise phone assistant. \
    The caller is on a phone line: keep answers short and spoken, never use lists or markup. \
    When the caller says goodbye or is done, say a short goodbye and call end_call.";
pub const ENV_AGENT_VOICE: &str = "AGENT_VOICE";
pub const DEFAULT_AGENT_VOICE: &str = "alloy";
pub const ENV_AGENT_GREETING: &str = "AGENT_GREETING";
pub const ENV_AGENT_TRANSFER_NUMBER: &str = "AGENT_TRANSFER_NUMBER";
pub const ENV_AGENT_DTMF: &str = "AGENT_DTMF";
/// Per-call configuration by the business's backend (`docs/agents.md`).
pub const ENV_AGENT_CONFIG_URL: &str = "AGENT_CONFIG_URL";
pub const ENV_AGENT_CONFIG_TIMEOUT_MS: &str = "AGENT_CONFIG_TIMEOUT_MS";
pub const DEFAULT_AGENT_CONFIG_TIMEOUT_MS: u64 = 1500;
pub const ENV_AGENT_CONNECT_TIMEOUT_SECS: &str = "AGENT_CONNECT_TIMEOUT_SECS";
/// The agents file (TOML, docs/agents.md): several agents, chosen by the number called. Without
/// it, the `AGENT_*` variables make one agent.
pub const ENV_AGENTS_FILE: &str = "AGENTS_FILE";
/// `whsec_<base64>`: signs every request callvisor makes to the business (Standard Webhooks).
pub const ENV_WEBHOOK_SECRET: &str = "WEBHOOK_SECRET";
/// The name of the environment variables' agent, and of its `AGENT_TRANSFER_NUMBER` target.
pub const ENV_AGENT_NAME: &str = "default";
/// The variables that configure one agent, and the agents file's key each becomes: with
/// `AGENTS_FILE` set, any of them is an error (two sources of truth). `OPENAI_MODEL` is not
/// among them: it stays the model of every agent that names none.
pub const PER_AGENT_VARIABLES: [(&str, &str); 6] = [
    (ENV_AGENT_INSTRUCTIONS, "instructions"),
    (ENV_AGENT_INSTRUCTIONS_FILE, "instructions_file"),
    (ENV_AGENT_VOICE, "voice"),
    (ENV_AGENT_GREETING, "greeting"),
    (ENV_AGENT_TRANSFER_NUMBER, "transfer_targets"),
    (ENV_AGENT_DTMF, "dtmf"),
];
/// The real API's handshake takes 300-1,000 ms; past 5 s the caller has waited in silence long
/// enough, and the call fails over to another replica.
pub const DEFAULT_AGENT_CONNECT_TIMEOUT_SECS: u64 = 5;

/// `HANDLER=openai`: the voice agent's settings.
///
/// Global: `api_key`, `url`, `connect_timeout`, `agents`, `webhook_secret`. The other fields are
/// one agent's (the default agent, else the file's first), kept while the runtime
/// (`openai/mod.rs`) reads them; it moves to `agents` (one [`Agent`] per call, by `To`).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `OPENAI_API_KEY`; never logged.
    pub api_key: SecretString,
    /// `OPENAI_REALTIME_URL` (`wss://…`; tests point it at a fake).
    pub url: String,
    /// Every agent and which answers which number: `AGENTS_FILE`'s, or the `AGENT_*`
    /// variables' one agent (named `default`).
    pub agents: Arc<Agents>,
    /// `WEBHOOK_SECRET`: signs the requests to the business (tools, per-call configuration);
    /// always set when an agent has a tool.
    pub webhook_secret: Option<WebhookSecret>,
    /// `AGENT_CONFIG_URL`: POSTed at each call's start for per-call settings (signed).
    pub config_url: Option<String>,
    /// `AGENT_CONFIG_TIMEOUT_MS`: how long a call waits for that answer.
    pub config_timeout: Duration,
    /// `AGENT_CONNECT_TIMEOUT_SECS`: how long the model's handshake may take before the call is
    /// given up to another replica.
    pub connect_timeout: Duration,
}

/// The app every call runs (`HANDLER`).
#[derive(Clone, Debug)]
pub enum HandlerKind {
    /// Every audio frame straight back to the caller.
    Echo,
    /// Each call relayed to an upstream bot that speaks Twilio's Media Streams protocol.
    Bridge {
        /// `ws://` or `wss://`.
        url: String,
        connect_timeout: Duration,
    },
    /// A phone voice agent on OpenAI's Realtime API.
    OpenAi(std::sync::Arc<AgentConfig>),
}

impl PartialEq for HandlerKind {
    /// Compares what is not secret.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HandlerKind::Echo, HandlerKind::Echo) => true,
            (
                HandlerKind::Bridge {
                    url: a,
                    connect_timeout: x,
                },
                HandlerKind::Bridge {
                    url: b,
                    connect_timeout: y,
                },
            ) => a == b && x == y,
            (HandlerKind::OpenAi(a), HandlerKind::OpenAi(b)) => {
                let names = |c: &AgentConfig| -> Vec<(String, String, String)> {
                    c.agents
                        .iter()
                        .map(|g| (g.name.clone(), g.model.clone(), g.voice.clone()))
                        .collect()
                };
                a.url == b.url && names(a) == names(b)
            }
            _ => false,
        }
    }
}

impl HandlerKind {
    /// What `/` and the startup line call it.
    pub fn name(&self) -> &'static str {
        match self {
            HandlerKind::Echo => "echo",
            HandlerKind::Bridge { .. } => "bridge",
            HandlerKind::OpenAi(_) => "openai",
        }
    }
}
/// 1 MiB holds about 95 s of Twilio media frames (8,000 bytes of mu-law a second, base64 in
/// JSON): a whole spoken answer an agent sends faster than real time fits with room to spare.
pub const DEFAULT_OUTBOUND_BUFFER_KIB: usize = 1024;

/// The effective configuration of one replica. Secrets are [`SecretString`]s: neither `Debug`
/// nor the startup line (`Display`) can print them.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: IpAddr,
    /// 0 asks the OS for a free port (tests).
    pub port: u16,
    /// Live calls this replica admits at once; HTTP requests never count against it.
    pub limit_concurrency: usize,
    /// Base URL Twilio reaches us at; `None` derives it per request from the forwarded headers.
    pub public_url: Option<String>,
    /// Bounces to another replica before the caller hears `busy_message`.
    pub max_redirects: u32,
    pub start_timeout: Duration,
    pub idle_timeout: Duration,
    pub busy_message: String,
    /// HTTP worker threads; `None` lets actix use one per logical CPU this process may use
    /// (`std::thread::available_parallelism`: CPU affinity and cgroup quota included).
    pub workers: Option<usize>,
    /// After SIGTERM, how long live calls may go on before they are handed off.
    pub drain_timeout: Duration,
    /// Names this replica in `/` (Railway's replica id, else the hostname).
    pub replica: String,
    /// `text` (default) or `json`: one JSON object per log line.
    pub log_format: LogFormat,
    /// The Twilio account's auth token; when set, every Twilio request must be signed with it.
    pub twilio_auth_token: Option<SecretString>,
    /// Bytes of frames one call may have queued for its socket before it is closed 1008; also the
    /// cap of its app's upstream queue, where frames past it are dropped.
    pub outbound_buffer_bytes: usize,
    /// Twilio's REST API (call control); tests point it at a fake.
    pub twilio_api_base_url: String,
    /// The account whose calls are controlled; `None`: each call's `start.accountSid`.
    pub twilio_account_sid: Option<String>,
    /// `TWILIO_API_KEY_SID` and `TWILIO_API_KEY_SECRET`, preferred over the auth token for REST.
    pub twilio_api_key: Option<(String, SecretString)>,
    /// The app every call runs.
    pub handler: HandlerKind,
    /// Call records (`CALL_EVENTS_URL`); `None`: none are made.
    pub records: Option<crate::records::RecordSettings>,
    /// `RECORD_CALLS`: Twilio records each call (`None`: it does not).
    pub recording: Option<crate::records::recording::RecordingSettings>,
}

/// A variable that is set to something this service cannot use.
#[derive(Debug, PartialEq)]
pub struct ConfigError {
    pub variable: &'static str,
    /// What it is set to (empty: unset; `(hidden)` for a secret).
    pub value: String,
    pub expected: Cow<'static, str>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            return write!(f, "missing {}: {}", self.variable, self.expected);
        }
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment, after loading `.env` if there is one (the real environment
    /// wins over the file).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Parses the configuration from any variable source. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let parse =
            |name: &'static str, expected: &'static str, ok: &dyn Fn(&str) -> bool| match get(name)
            {
                Some(v) if ok(v.trim()) => Ok(Some(v.trim().to_string())),
                Some(v) => Err(ConfigError {
                    variable: name,
                    value: v,
                    expected: expected.into(),
                }),
                None => Ok(None),
            };

        let host = parse(ENV_HOST, "an IP address such as 0.0.0.0", &|v| {
            v.parse::<IpAddr>().is_ok()
        })?
        .map_or_else(|| DEFAULT_HOST.parse().unwrap(), |v| v.parse().unwrap());
        let port = parse(ENV_PORT, "a port number from 0 to 65535", &|v| {
            v.parse::<u16>().is_ok()
        })?
        .map_or(DEFAULT_PORT, |v| v.parse().unwrap());
        let limit_concurrency = parse(ENV_LIMIT_CONCURRENCY, "a whole number >= 1", &|v| {
            v.parse::<usize>().is_ok_and(|n| n >= 1)
        })?
        .map_or(DEFAULT_LIMIT_CONCURRENCY, |v| v.parse().unwrap());
        let max_redirects = parse(ENV_MAX_REDIRECTS, "a whole number from 0 to 10", &|v| {
            v.parse::<u32>().is_ok_and(|n| n <= TWILIO_MAX_REDIRECTS)
        })?
        .map_or(DEFAULT_MAX_REDIRECTS, |v| v.parse().unwrap());
        let secs = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(
                parse(name, "a whole number of seconds from 1 to 86400", &|v| {
                    v.parse::<u64>().is_ok_and(|n| (1..=86_400).contains(&n))
                })?
                .map_or(default, |v| v.parse().unwrap()),
            ))
        };
        let start_timeout = secs(ENV_START_TIMEOUT_SECS, DEFAULT_START_TIMEOUT_SECS)?;
        let idle_timeout = secs(ENV_IDLE_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS)?;
        let workers = parse(ENV_WORKERS, "a whole number from 1 to 256", &|v| {
            v.parse::<usize>().is_ok_and(|n| (1..=256).contains(&n))
        })?
        .map(|v| v.parse().unwrap());

        let public_url = match parse(
            ENV_PUBLIC_URL,
            "an absolute http:// or https:// URL with a host and no query",
            &|v| valid_base_url(v),
        )? {
            Some(url) => Some(url.trim_end_matches('/').to_string()),
            None => get(ENV_RAILWAY_PUBLIC_DOMAIN).map(|d| format!("https://{}", d.trim())),
        };
        let busy_message = get(ENV_BUSY_MESSAGE).unwrap_or_else(|| DEFAULT_BUSY_MESSAGE.into());
        let replica = get(ENV_RAILWAY_REPLICA_ID)
            .or_else(hostname)
            .unwrap_or_else(|| "unknown".into());

        let whole_secs = |name: &'static str| {
            parse(name, "a whole number of seconds from 0 to 86400", &|v| {
                v.parse::<u64>().is_ok_and(|n| n <= 86_400)
            })
            .map(|v| v.map(|v| v.parse::<u64>().unwrap()))
        };
        let railway_draining = whole_secs(ENV_RAILWAY_DEPLOYMENT_DRAINING_SECONDS)?;
        let drain_timeout = Duration::from_secs(match whole_secs(ENV_DRAIN_TIMEOUT_SECS)? {
            Some(secs) => secs,
            None => railway_draining.map_or(DEFAULT_DRAIN_TIMEOUT_SECS, |s| {
                s.saturating_sub(DRAIN_MARGIN_SECS)
            }),
        });
        let log_format = match parse(ENV_LOG_FORMAT, "text or json", &|v| {
            v == "text" || v == "json"
        })?
        .as_deref()
        {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        let twilio_auth_token =
            get(ENV_TWILIO_AUTH_TOKEN).map(|t| SecretString::from(t.trim().to_string()));
        let outbound_buffer_bytes = parse(
            ENV_OUTBOUND_BUFFER_KIB,
            "a whole number of KiB from 4 to 1048576",
            &|v| {
                v.parse::<usize>()
                    .is_ok_and(|n| (4..=1_048_576).contains(&n))
            },
        )?
        .map_or(DEFAULT_OUTBOUND_BUFFER_KIB, |v| v.parse().unwrap())
            * 1024;
        let twilio_api_base_url = parse(
            ENV_TWILIO_API_BASE_URL,
            "an absolute http:// or https:// URL with a host and no query",
            &|v| valid_base_url(v),
        )?
        .map_or_else(
            || crate::twilio::rest::DEFAULT_API_BASE_URL.to_string(),
            |v| v.trim_end_matches('/').to_string(),
        );
        let twilio_account_sid = parse(
            ENV_TWILIO_ACCOUNT_SID,
            "AC followed by 32 hex digits",
            &|v| twilio_sid(v, "AC"),
        )?;
        let key_sid = parse(
            ENV_TWILIO_API_KEY_SID,
            "SK followed by 32 hex digits",
            &|v| twilio_sid(v, "SK"),
        )?;
        let key_secret = get(ENV_TWILIO_API_KEY_SECRET).map(|v| v.trim().to_string());
        let twilio_api_key = match (key_sid, key_secret) {
            (Some(sid), Some(secret)) => Some((sid, SecretString::from(secret))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError {
                    variable: ENV_TWILIO_API_KEY_SECRET,
                    value: String::new(),
                    expected: "to be set together with TWILIO_API_KEY_SID".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    variable: ENV_TWILIO_API_KEY_SID,
                    value: String::new(),
                    expected: "to be set together with TWILIO_API_KEY_SECRET".into(),
                })
            }
        };

        let handler = match parse(ENV_HANDLER, "echo, bridge or openai", &|v| {
            v == "echo" || v == "bridge" || v == "openai"
        })?
        .as_deref()
        {
            Some("bridge") => {
                let url = parse(ENV_BRIDGE_URL, "a ws:// or wss:// URL of the bot", &|v| {
                    valid_ws_url(v)
                })?
                .ok_or(ConfigError {
                    variable: ENV_BRIDGE_URL,
                    value: String::new(),
                    expected: "HANDLER=bridge relays every call to it; set a ws:// or wss:// URL"
                        .into(),
                })?;
                let connect_timeout = Duration::from_secs(
                    parse(
                        ENV_BRIDGE_CONNECT_TIMEOUT_SECS,
                        "a whole number of seconds from 1 to 60",
                        &|v| v.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n)),
                    )?
                    .map_or(DEFAULT_BRIDGE_CONNECT_TIMEOUT_SECS, |v| v.parse().unwrap()),
                );
                HandlerKind::Bridge {
                    url,
                    connect_timeout,
                }
            }
            Some("openai") => HandlerKind::OpenAi(std::sync::Arc::new(agent_config(&get)?)),
            _ => HandlerKind::Echo,
        };
        if handler != HandlerKind::Echo && twilio_api_key.is_none() && twilio_auth_token.is_none() {
            // An app that ends a call must hang it up through REST: closing the stream alone
            // makes Twilio run the <Redirect>, and the call loops through its retries.
            return Err(ConfigError {
                variable: ENV_TWILIO_API_KEY_SID,
                value: String::new(),
                expected: "a call app (HANDLER other than echo) hangs calls up through Twilio's \
                           REST API: set TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET, or \
                           TWILIO_AUTH_TOKEN"
                    .into(),
            });
        }

        let records = crate::records::settings_from(&get, webhook_secret(&get)?.as_ref())?;
        let recording = crate::records::recording::settings_from(&get)?;
        if recording.is_some() && twilio_api_key.is_none() && twilio_auth_token.is_none() {
            return Err(ConfigError {
                variable: crate::records::recording::ENV_RECORD_CALLS,
                value: get(crate::records::recording::ENV_RECORD_CALLS).unwrap_or_default(),
                expected: "Twilio REST credentials to start recordings with: set \
                           TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET, or TWILIO_AUTH_TOKEN \
                           (or RECORD_CALLS=off)"
                    .into(),
            });
        }

        Ok(Config {
            records,
            recording,
            handler,
            log_format,
            drain_timeout,
            twilio_auth_token,
            outbound_buffer_bytes,
            twilio_api_base_url,
            twilio_account_sid,
            twilio_api_key,
            host,
            port,
            limit_concurrency,
            public_url,
            max_redirects,
            start_timeout,
            idle_timeout,
            busy_message,
            workers,
            replica,
        })
    }

    /// How Twilio requests are authenticated, as `/` reports it (the token itself never shows).
    pub fn auth_mode(&self) -> &'static str {
        if self.twilio_auth_token.is_some() {
            "twilio-signature"
        } else {
            "disabled"
        }
    }

    /// What Twilio's REST API (call control) authenticates with: the API key when set, else the
    /// auth token; `None` when neither is set.
    pub fn rest_credentials(&self) -> Option<crate::twilio::rest::Credentials> {
        use crate::twilio::rest::Credentials;
        match (&self.twilio_api_key, &self.twilio_auth_token) {
            (Some((sid, secret)), _) => Some(Credentials::ApiKey {
                sid: sid.clone(),
                secret: secret.clone(),
            }),
            (None, Some(token)) => Some(Credentials::AuthToken(token.clone())),
            (None, None) => None,
        }
    }

    /// A configuration for tests: loopback, port 0, defaults elsewhere.
    pub fn for_tests() -> Self {
        let mut config = Self::from_lookup(|_| None).expect("defaults are valid");
        config.host = [127, 0, 0, 1].into();
        config.port = 0;
        config.workers = Some(1);
        config
    }
}

impl fmt::Display for Config {
    /// The one startup line; holds no secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listen={}:{} limit_concurrency={} public_url={} max_redirects={} \
             start_timeout={}s idle_timeout={}s drain_timeout={}s outbound_buffer={}KiB workers={} \
             replica={} auth={} handler={}{} call_control={}",
            self.host,
            self.port,
            self.limit_concurrency,
            self.public_url
                .as_deref()
                .unwrap_or("(from request headers)"),
            self.max_redirects,
            self.start_timeout.as_secs(),
            self.idle_timeout.as_secs(),
            self.drain_timeout.as_secs(),
            self.outbound_buffer_bytes / 1024,
            self.workers.map_or("auto".to_string(), |w| w.to_string()),
            self.replica,
            self.auth_mode(),
            self.handler.name(),
            match &self.handler {
                HandlerKind::Bridge { url, .. } => format!("({})", url_origin(url)),
                HandlerKind::OpenAi(agent) =>
                    match (agent.agents.file(), agent.agents.iter().next()) {
                        (None, Some(only)) => format!(
                            "({} model={} voice={})",
                            url_origin(&agent.url),
                            only.model,
                            only.voice
                        ),
                        (file, _) => format!(
                            "({} agents_file={} agents={})",
                            url_origin(&agent.url),
                            file.map_or_else(|| "-".into(), |f| f.display().to_string()),
                            agent
                                .agents
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    },
                HandlerKind::Echo => String::new(),
            },
            self.rest_credentials()
                .map_or("off".to_string(), |c| c.describe()),
        )
    }
}

pub(crate) fn valid_base_url(v: &str) -> bool {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split('/').next().unwrap_or("");
            !host.is_empty()
                && !v.contains('?')
                && !v.contains('#')
                && !v.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// `HANDLER=openai`'s variables.
fn agent_config(get: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigError> {
    let api_key = get(ENV_OPENAI_API_KEY)
        .map(|k| SecretString::from(k.trim().to_string()))
        .ok_or(ConfigError {
            variable: ENV_OPENAI_API_KEY,
            value: String::new(),
            expected: "HANDLER=openai talks to OpenAI's Realtime API with it".into(),
        })?;
    let url = match get(ENV_OPENAI_REALTIME_URL) {
        Some(v) if valid_ws_url(v.trim()) => v.trim().to_string(),
        Some(v) => {
            return Err(ConfigError {
                variable: ENV_OPENAI_REALTIME_URL,
                value: v,
                expected: "a ws:// or wss:// URL".into(),
            })
        }
        None => DEFAULT_OPENAI_REALTIME_URL.to_string(),
    };
    let connect_timeout = Duration::from_secs(match get(ENV_AGENT_CONNECT_TIMEOUT_SECS) {
        None => DEFAULT_AGENT_CONNECT_TIMEOUT_SECS,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(secs) if (1..=60).contains(&secs) => secs,
            _ => {
                return Err(ConfigError {
                    variable: ENV_AGENT_CONNECT_TIMEOUT_SECS,
                    value: v,
                    expected: "a whole number of seconds from 1 to 60".into(),
                })
            }
        },
    });
    let AgentsSetup {
        agents,
        webhook_secret,
    } = agents_setup(get, get(ENV_AGENTS_FILE).as_deref().map(str::trim))?;
    let config_url = match get(ENV_AGENT_CONFIG_URL).map(|v| v.trim().to_string()) {
        Some(v) if valid_base_url(&v) => Some(v),
        Some(v) => {
            return Err(ConfigError {
                variable: ENV_AGENT_CONFIG_URL,
                value: v,
                expected: "an http:// or https:// URL without a query".into(),
            })
        }
        None => None,
    };
    let config_timeout = Duration::from_millis(match get(ENV_AGENT_CONFIG_TIMEOUT_MS) {
        None => DEFAULT_AGENT_CONFIG_TIMEOUT_MS,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (1..=10_000).contains(&ms) => ms,
            _ => {
                return Err(ConfigError {
                    variable: ENV_AGENT_CONFIG_TIMEOUT_MS,
                    value: v,
                    expected: "milliseconds from 1 to 10000".into(),
                })
            }
        },
    });
    Ok(AgentConfig {
        api_key,
        url,
        config_url,
        config_timeout,
        connect_timeout,
        agents: Arc::new(agents),
        webhook_secret,
    })
}

/// The agents `HANDLER=openai` runs, and the secret their requests are signed with.
#[derive(Debug)]
pub struct AgentsSetup {
    pub agents: Agents,
    /// `WEBHOOK_SECRET`: set whenever an agent has a tool.
    pub webhook_secret: Option<WebhookSecret>,
}

/// Why [`agents_setup`] failed: the agents file itself, or a variable.
#[derive(Debug)]
pub enum AgentsSetupError {
    /// The file's own line: file, line, agent, key, what is wrong.
    File(AgentsError),
    Variable(ConfigError),
}

impl fmt::Display for AgentsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentsSetupError::File(e) => e.fmt(f),
            AgentsSetupError::Variable(e) => e.fmt(f),
        }
    }
}

impl From<AgentsSetupError> for ConfigError {
    fn from(e: AgentsSetupError) -> Self {
        match e {
            AgentsSetupError::Variable(e) => e,
            AgentsSetupError::File(e) => ConfigError {
                variable: ENV_AGENTS_FILE,
                value: e.file.display().to_string(),
                expected: format!("an agents file without errors, but {}", e.detail()).into(),
            },
        }
    }
}

/// The agents of a deployment: those of `file` (an agents file, `AGENTS_FILE`'s), or without
/// one the environment variables' one agent, named `default`, which answers every number
/// (`AGENT_TRANSFER_NUMBER` becomes its transfer target named `default`). Also reads
/// `WEBHOOK_SECRET` (required when an agent has a tool) and refuses per-agent variables beside a
/// file. `callvisor agents check` runs exactly this.
pub fn agents_setup(
    get: &dyn Fn(&str) -> Option<String>,
    file: Option<&str>,
) -> Result<AgentsSetup, AgentsSetupError> {
    let variable = AgentsSetupError::Variable;
    let model = get(ENV_OPENAI_MODEL).map_or_else(
        || DEFAULT_OPENAI_MODEL.to_string(),
        |m| m.trim().to_string(),
    );
    let agents = match file {
        Some(file) => {
            let set: Vec<(&str, &str)> = PER_AGENT_VARIABLES
                .iter()
                .filter(|(name, _)| get(name).is_some())
                .copied()
                .collect();
            if !set.is_empty() {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                let keys: Vec<String> = set.iter().map(|(n, k)| format!("{n} -> {k}")).collect();
                return Err(variable(ConfigError {
                    variable: ENV_AGENTS_FILE,
                    value: file.to_string(),
                    expected: format!(
                        "no per-agent variable beside it (the file is the one source of truth), \
                         but {} {} set: move {} into the file ({}) and unset {}",
                        names.join(", "),
                        if names.len() == 1 { "is" } else { "are" },
                        if names.len() == 1 { "it" } else { "them" },
                        keys.join(", "),
                        if names.len() == 1 { "it" } else { "them" },
                    )
                    .into(),
                }));
            }
            Agents::load(Path::new(file), get, &model).map_err(AgentsSetupError::File)?
        }
        None => Agents::single(env_agent(get, model).map_err(variable)?),
    };
    let webhook_secret = match get(ENV_WEBHOOK_SECRET) {
        Some(text) => Some(WebhookSecret::parse(text.trim()).map_err(|e| {
            variable(ConfigError {
                variable: ENV_WEBHOOK_SECRET,
                value: "(hidden)".into(),
                expected: format!(
                    "whsec_ and the base64 of at least {} random bytes: {e}",
                    crate::webhooks::MIN_KEY_BYTES
                )
                .into(),
            })
        })?),
        None => None,
    };
    if let (Some((agent, tool)), None) = (agents.first_tool(), &webhook_secret) {
        return Err(variable(ConfigError {
            variable: ENV_WEBHOOK_SECRET,
            value: String::new(),
            expected: format!(
                "agent `{}`'s tool `{}` (and any other tool) POSTs to the business signed with \
                 it (Standard Webhooks): set whsec_ and the base64 of at least {} random bytes \
                 (docs/security.md)",
                agent.name,
                tool.name,
                crate::webhooks::MIN_KEY_BYTES
            )
            .into(),
        }));
    }
    if get(ENV_AGENT_CONFIG_URL).is_some() && webhook_secret.is_none() {
        return Err(variable(ConfigError {
            variable: ENV_WEBHOOK_SECRET,
            value: String::new(),
            expected: format!(
                "{ENV_AGENT_CONFIG_URL} is POSTed each call signed with it (Standard Webhooks): \
                 set whsec_ and the base64 of at least {} random bytes (docs/security.md)",
                crate::webhooks::MIN_KEY_BYTES
            )
            .into(),
        }));
    }
    Ok(AgentsSetup {
        agents,
        webhook_secret,
    })
}

/// The one agent of a deployment without an agents file: `AGENT_*` and `OPENAI_MODEL`.
fn env_agent(get: &dyn Fn(&str) -> Option<String>, model: String) -> Result<Agent, ConfigError> {
    let instructions = match (
        get(ENV_AGENT_INSTRUCTIONS),
        get(ENV_AGENT_INSTRUCTIONS_FILE),
    ) {
        (Some(text), _) => text,
        (None, Some(path)) => std::fs::read_to_string(path.trim()).map_err(|_| ConfigError {
            variable: ENV_AGENT_INSTRUCTIONS_FILE,
            value: path,
            expected: "a readable file holding the agent's instructions".into(),
        })?,
        (None, None) => DEFAULT_AGENT_INSTRUCTIONS.to_string(),
    };
    let voice = get(ENV_AGENT_VOICE)
        .map_or_else(|| DEFAULT_AGENT_VOICE.to_string(), |v| v.trim().to_string());
    let mut agent = Agent::basic(ENV_AGENT_NAME, &model, &voice, &instructions);
    agent.greeting = get(ENV_AGENT_GREETING);
    if let Some(v) = get(ENV_AGENT_TRANSFER_NUMBER) {
        if !is_e164(v.trim()) {
            return Err(ConfigError {
                variable: ENV_AGENT_TRANSFER_NUMBER,
                value: v,
                expected: "an E.164 number such as +14155550123".into(),
            });
        }
        agent.transfer_targets.push(TransferTarget {
            name: ENV_AGENT_NAME.to_string(),
            destination: Destination::Number(v.trim().to_string()),
        });
    }
    agent.dtmf_to_model = match get(ENV_AGENT_DTMF).map(|v| v.trim().to_ascii_lowercase()) {
        None => true,
        Some(v) if v == "on" => true,
        Some(v) if v == "off" => false,
        Some(v) => {
            return Err(ConfigError {
                variable: ENV_AGENT_DTMF,
                value: v,
                expected: "on (key presses reach the model) or off".into(),
            })
        }
    };
    Ok(agent)
}

/// `WEBHOOK_SECRET`: signs every request to the business (tools, per-call configuration, call
/// records). Never logged.
pub fn webhook_secret(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<WebhookSecret>, ConfigError> {
    get(ENV_WEBHOOK_SECRET)
        .map(|text| {
            WebhookSecret::parse(text.trim()).map_err(|e| ConfigError {
                variable: ENV_WEBHOOK_SECRET,
                value: "(hidden)".into(),
                expected: format!(
                    "whsec_ and the base64 of at least {} random bytes: {e}",
                    crate::webhooks::MIN_KEY_BYTES
                )
                .into(),
            })
        })
        .transpose()
}

/// `+` then 2 to 15 digits, the first not 0 (ITU E.164).
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// `ws://host…` or `wss://host…`.
fn valid_ws_url(v: &str) -> bool {
    let rest = v.strip_prefix("wss://").or_else(|| v.strip_prefix("ws://"));
    rest.is_some_and(|r| {
        !r.split(['/', '?']).next().unwrap_or("").is_empty() && !v.contains(char::is_whitespace)
    })
}

/// Scheme and host of a URL, for logs: its path and query may carry a credential.
fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// `prefix` and 32 hex digits, as Twilio writes its SIDs.
fn twilio_sid(v: &str, prefix: &str) -> bool {
    v.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.limit_concurrency, 100);
        assert_eq!(c.max_redirects, 8);
        assert_eq!(c.start_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.public_url, None);
        assert_eq!(c.busy_message, DEFAULT_BUSY_MESSAGE);
        assert_eq!(c.outbound_buffer_bytes, 1024 * 1024);
    }

    /// Every variable outside the agent's, each set to something other than its default, and
    /// each found in the Config: a variable whose parsing is lost fails here. (The two Railway
    /// fallbacks, which PUBLIC_URL and DRAIN_TIMEOUT_SECS override, have tests of their own.)
    #[test]
    fn reads_every_variable() {
        use secrecy::ExposeSecret;
        let c = parse(&[
            ("PORT", "9000"),
            ("HOST", "127.0.0.1"),
            ("LIMIT_CONCURRENCY", "2500"),
            ("PUBLIC_URL", "https://calls.example.com/"),
            ("MAX_REDIRECTS", "5"),
            ("START_TIMEOUT_SECS", "3"),
            ("IDLE_TIMEOUT_SECS", "7"),
            ("BUSY_MESSAGE", "Busy."),
            ("WORKERS", "3"),
            ("RAILWAY_REPLICA_ID", "r-1"),
            ("DRAIN_TIMEOUT_SECS", "12"),
            ("LOG_FORMAT", "json"),
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("OUTBOUND_BUFFER_KIB", "64"),
            ("TWILIO_API_BASE_URL", "http://127.0.0.1:9/twilio/"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_KEY_SID", "SK0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_KEY_SECRET", "key-secret"),
            ("HANDLER", "bridge"),
            ("BRIDGE_URL", "ws://bot.test/stream"),
            ("BRIDGE_CONNECT_TIMEOUT_SECS", "9"),
        ])
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.limit_concurrency, 2500);
        assert_eq!(c.public_url.as_deref(), Some("https://calls.example.com"));
        assert_eq!(c.max_redirects, 5);
        assert_eq!(c.start_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.busy_message, "Busy.");
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.replica, "r-1");
        assert_eq!(c.drain_timeout, Duration::from_secs(12));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.twilio_auth_token.as_ref().map(|t| t.expose_secret()),
            Some("tok")
        );
        assert_eq!(c.outbound_buffer_bytes, 64 * 1024);
        assert_eq!(c.twilio_api_base_url, "http://127.0.0.1:9/twilio");
        assert_eq!(
            c.twilio_account_sid.as_deref(),
            Some("AC0123456789abcdef0123456789abcdef")
        );
        let (key_sid, key_secret) = c.twilio_api_key.as_ref().expect("the API key pair");
        assert_eq!(
            (key_sid.as_str(), key_secret.expose_secret()),
            ("SK0123456789abcdef0123456789abcdef", "key-secret")
        );
        assert_eq!(
            c.handler,
            HandlerKind::Bridge {
                url: "ws://bot.test/stream".into(),
                connect_timeout: Duration::from_secs(9),
            }
        );
    }

    /// The same for `HANDLER=openai`: every agent variable set to something other than its
    /// default, and each found in the AgentConfig.
    #[test]
    fn reads_every_agent_variable() {
        use secrecy::ExposeSecret;
        let agent = |vars: &[(&str, &str)]| {
            let mut all = vec![
                ("HANDLER", "openai"),
                ("OPENAI_API_KEY", "sk-test-key"),
                ("TWILIO_AUTH_TOKEN", "tok"),
            ];
            all.extend_from_slice(vars);
            match parse(&all).unwrap().handler {
                HandlerKind::OpenAi(agent) => agent,
                other => panic!("{other:?}"),
            }
        };
        let a = agent(&[
            ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
            ("OPENAI_MODEL", "gpt-realtime-mini"),
            ("AGENT_INSTRUCTIONS", "You answer for {{To}}."),
            ("AGENT_VOICE", "marin"),
            ("AGENT_GREETING", "Hello, Acme here."),
            ("AGENT_TRANSFER_NUMBER", "+14155550123"),
            ("AGENT_DTMF", "off"),
            ("AGENT_CONNECT_TIMEOUT_SECS", "17"),
        ]);
        assert_eq!(a.api_key.expose_secret(), "sk-test-key");
        assert_eq!(a.url, "ws://127.0.0.1:9/v1/realtime");
        assert_eq!(a.connect_timeout, Duration::from_secs(17));
        // The same settings make the one agent, `default`, that answers every number.
        assert_eq!(a.agents.len(), 1);
        assert!(a.agents.file().is_none());
        let only = a
            .agents
            .for_number("+15550001111")
            .expect("the default agent");
        assert_eq!(only.name, "default");
        assert!(only.is_default);
        assert_eq!(
            (only.model.as_str(), only.voice.as_str()),
            ("gpt-realtime-mini", "marin")
        );
        assert_eq!(only.instructions, "You answer for {{To}}.");
        assert_eq!(only.greeting.as_deref(), Some("Hello, Acme here."));
        assert_eq!(
            only.transfer_target("default"),
            Some(&Destination::Number("+14155550123".into())),
            "AGENT_TRANSFER_NUMBER is the transfer target named default"
        );
        assert!(!only.dtmf_to_model);
        assert!(a.webhook_secret.is_none());
        let signed = agent(&[("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]);
        let secret = signed.webhook_secret.as_ref().expect("WEBHOOK_SECRET");
        let reference = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(secret.sign("id", 1, b"x"), reference.sign("id", 1, b"x"));
        let dir = agents_folder(
            "every-variable",
            "[agents.only]\ndefault = true\ninstructions = \"From the file.\"\n",
        );
        let file = dir.join("agents.toml");
        let from_file = agent(&[("AGENTS_FILE", file.to_str().unwrap())]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(from_file.agents.file(), Some(file.as_path()));
        assert_eq!(
            from_file.agents.by_name("only").unwrap().instructions,
            "From the file."
        );

        // The prompt from a file, unless AGENT_INSTRUCTIONS is set too.
        let path = std::env::temp_dir().join(format!(
            "callvisor-config-test-{}-instructions.txt",
            std::process::id()
        ));
        std::fs::write(&path, "You answer from a file.").unwrap();
        let file = path.to_str().unwrap();
        let from_file = agent(&[("AGENT_INSTRUCTIONS_FILE", file)]);
        let both = agent(&[
            ("AGENT_INSTRUCTIONS_FILE", file),
            ("AGENT_INSTRUCTIONS", "You answer inline."),
        ]);
        std::fs::remove_file(&path).unwrap();
        let instructions =
            |c: &AgentConfig| c.agents.by_name("default").unwrap().instructions.clone();
        assert_eq!(instructions(&from_file), "You answer from a file.");
        assert_eq!(instructions(&both), "You answer inline.");
    }

    /// A folder of the test's own holding `agents.toml` with `text`.
    fn agents_folder(test: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "callvisor-config-agents-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("agents.toml"), text).unwrap();
        dir
    }

    fn openai(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![
            ("HANDLER", "openai"),
            ("OPENAI_API_KEY", "sk-test-key"),
            ("TWILIO_AUTH_TOKEN", "tok"),
        ];
        all.extend_from_slice(vars);
        parse(&all)
    }

    const TWO_AGENTS: &str = r#"
[agents.support]
numbers = ["+15550001111"]
instructions = "Support."
voice = "cedar"
transfer_targets = { billing = "sip:billing@pbx.example.com", sales = "+15550002222" }

[agents.sales]
numbers = ["+15550003333"]
default = true
instructions = "Sales."
model = "gpt-realtime-mini"
greeting = "Sales here."
dtmf = "off"
"#;

    #[test]
    fn an_agents_file_gives_the_agents_and_the_default_runs_until_routing_does() {
        let dir = agents_folder("file", TWO_AGENTS);
        let file = dir.join("agents.toml");
        let c = openai(&[
            ("AGENTS_FILE", file.to_str().unwrap()),
            ("OPENAI_MODEL", "gpt-from-env"),
        ])
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let HandlerKind::OpenAi(agent) = &c.handler else {
            panic!("{:?}", c.handler)
        };
        let names: Vec<&str> = agent.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["support", "sales"]);
        let support = agent.agents.for_number("+15550001111").unwrap();
        assert_eq!(support.name, "support");
        assert_eq!(
            support.model, "gpt-from-env",
            "OPENAI_MODEL: the model of agents that name none"
        );
        assert_eq!(
            agent.agents.for_number("+15559999999").unwrap().name,
            "sales"
        );
        let sales = agent.agents.default_agent().unwrap();
        assert_eq!(sales.instructions, "Sales.");
        assert_eq!(sales.model, "gpt-realtime-mini");
        assert_eq!(sales.voice, DEFAULT_AGENT_VOICE);
        assert_eq!(sales.greeting.as_deref(), Some("Sales here."));
        assert!(sales.transfer_targets.is_empty());
        assert!(!sales.dtmf_to_model);
        let line = c.to_string();
        assert!(
            line.contains(&format!(
                "handler=openai(wss://api.openai.com agents_file={} agents=support,sales)",
                file.display()
            )),
            "{line}"
        );
    }

    #[test]
    fn per_agent_variables_beside_an_agents_file_are_refused_naming_each() {
        let dir = agents_folder("conflict", TWO_AGENTS);
        let file = dir.join("agents.toml");
        let path = file.to_str().unwrap();
        let one = openai(&[("AGENTS_FILE", path), ("AGENT_VOICE", "marin")]).unwrap_err();
        let all = openai(&[
            ("AGENTS_FILE", path),
            ("AGENT_INSTRUCTIONS", "x"),
            ("AGENT_INSTRUCTIONS_FILE", "/x"),
            ("AGENT_GREETING", "x"),
            ("AGENT_TRANSFER_NUMBER", "+15550002222"),
            ("AGENT_DTMF", "off"),
        ])
        .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(one.variable, "AGENTS_FILE");
        assert_eq!(
            one.to_string(),
            format!(
                "invalid AGENTS_FILE={path:?}: expected no per-agent variable beside it (the file \
                 is the one source of truth), but AGENT_VOICE is set: move it into the file \
                 (AGENT_VOICE -> voice) and unset it"
            )
        );
        assert!(
            all.to_string().ends_with(
                "but AGENT_INSTRUCTIONS, AGENT_INSTRUCTIONS_FILE, AGENT_GREETING, \
                 AGENT_TRANSFER_NUMBER, AGENT_DTMF are set: move them into the file \
                 (AGENT_INSTRUCTIONS -> instructions, AGENT_INSTRUCTIONS_FILE -> \
                 instructions_file, AGENT_GREETING -> greeting, AGENT_TRANSFER_NUMBER -> \
                 transfer_targets, AGENT_DTMF -> dtmf) and unset them"
            ),
            "{all}"
        );
    }

    #[test]
    fn a_bad_agents_file_stops_the_start_naming_file_line_agent_and_key() {
        let dir = agents_folder("bad", "[agents.a]\ndefault = true\nvoice = 7\n");
        let file = dir.join("agents.toml");
        let path = file.to_str().unwrap();
        let err = openai(&[("AGENTS_FILE", path)]).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((err.variable, err.value.as_str()), ("AGENTS_FILE", path));
        assert_eq!(
            err.to_string(),
            format!(
                "invalid AGENTS_FILE={path:?}: expected an agents file without errors, but line \
                 3: agent `a`, key `voice`: expected a string, found the integer 7"
            )
        );
        let gone = openai(&[("AGENTS_FILE", "/nonexistent/agents.toml")]).unwrap_err();
        assert_eq!(
            gone.to_string(),
            "invalid AGENTS_FILE=\"/nonexistent/agents.toml\": expected an agents file without \
             errors, but cannot be read: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn tools_need_a_webhook_secret_which_never_shows() {
        let dir = agents_folder(
            "secret",
            "[agents.a]\ndefault = true\n[[agents.a.tools]]\nname = \"lookup_order\"\n\
             description = \"d\"\nurl = \"https://api.example.com/t\"\n",
        );
        let file = dir.join("agents.toml");
        let path = file.to_str().unwrap();
        let missing = openai(&[("AGENTS_FILE", path)]).unwrap_err();
        let bad = openai(&[
            ("AGENTS_FILE", path),
            ("WEBHOOK_SECRET", "s3cret-without-prefix"),
        ])
        .unwrap_err();
        let short =
            openai(&[("AGENTS_FILE", path), ("WEBHOOK_SECRET", "whsec_c2hvcnQ=")]).unwrap_err();
        let good = openai(&[
            ("AGENTS_FILE", path),
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            missing.to_string(),
            "missing WEBHOOK_SECRET: agent `a`'s tool `lookup_order` (and any other tool) POSTs \
             to the business signed with it (Standard Webhooks): set whsec_ and the base64 of at \
             least 24 random bytes (docs/security.md)"
        );
        assert_eq!(bad.variable, "WEBHOOK_SECRET");
        assert_eq!(
            bad.to_string(),
            "invalid WEBHOOK_SECRET=\"(hidden)\": expected whsec_ and the base64 of at least 24 \
             random bytes: webhook secret does not start with `whsec_` (expected whsec_<base64 of \
             at least 24 random bytes>)"
        );
        assert!(short.to_string().contains("decodes to 5 bytes"), "{short}");
        assert!(!format!("{bad} {bad:?}").contains("s3cret"));
        let good = good.unwrap();
        let HandlerKind::OpenAi(agent) = &good.handler else {
            panic!()
        };
        assert!(agent.webhook_secret.is_some());
        let shown = format!("{good} {good:?}");
        assert!(
            !shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{shown}"
        );
        // Without tools, none is needed; a bad one is refused all the same.
        assert!(openai(&[]).unwrap().to_string().contains("handler=openai"));
        assert_eq!(
            openai(&[("WEBHOOK_SECRET", "nope")]).unwrap_err().variable,
            "WEBHOOK_SECRET"
        );
    }

    #[test]
    fn the_auth_token_never_shows_in_the_startup_line_nor_in_debug_output() {
        use secrecy::ExposeSecret;
        let c = parse(&[("TWILIO_AUTH_TOKEN", "s3cr3t-token")]).unwrap();
        assert_eq!(
            c.twilio_auth_token.as_ref().map(|t| t.expose_secret()),
            Some("s3cr3t-token")
        );
        let line = c.to_string();
        assert!(!line.contains("s3cr3t"), "{line}");
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("twilio_auth_token: Some("), "{debug}");
        assert!(line.contains("auth=twilio-signature"), "{line}");
        assert!(parse(&[]).unwrap().to_string().contains("auth=disabled"));
    }

    #[test]
    fn rest_credentials_prefer_the_api_key_and_come_in_pairs() {
        use crate::twilio::rest::Credentials;
        let sk = "SK0123456789abcdef0123456789abcdef";
        assert!(parse(&[]).unwrap().rest_credentials().is_none());
        let c = parse(&[("TWILIO_AUTH_TOKEN", "tok")]).unwrap();
        assert!(matches!(
            c.rest_credentials(),
            Some(Credentials::AuthToken(_))
        ));
        let c = parse(&[
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("TWILIO_API_KEY_SID", sk),
            ("TWILIO_API_KEY_SECRET", "key-s3cret"),
        ])
        .unwrap();
        match c.rest_credentials() {
            Some(Credentials::ApiKey { sid, .. }) => assert_eq!(sid, sk),
            other => panic!("{other:?}"),
        }
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("key-s3cret") && !debug.contains("tok\""),
            "{debug}"
        );
        assert_eq!(
            parse(&[("TWILIO_API_KEY_SID", sk)]).unwrap_err().variable,
            "TWILIO_API_KEY_SECRET"
        );
        assert_eq!(
            parse(&[("TWILIO_API_KEY_SECRET", "x")])
                .unwrap_err()
                .variable,
            "TWILIO_API_KEY_SID"
        );
        assert_eq!(c.twilio_api_base_url, "https://api.twilio.com");
    }

    #[test]
    fn the_app_is_chosen_by_handler_and_a_bridge_needs_its_url_and_call_control() {
        assert_eq!(parse(&[]).unwrap().handler, HandlerKind::Echo);
        let creds = ("TWILIO_AUTH_TOKEN", "tok");
        let c = parse(&[
            ("HANDLER", "bridge"),
            ("BRIDGE_URL", "wss://bot.example.com/stream?key=s3cret"),
            creds,
        ])
        .unwrap();
        assert_eq!(
            c.handler,
            HandlerKind::Bridge {
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
            (vec![("HANDLER", "agent")], "HANDLER"),
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
        let missing = parse(&[("HANDLER", "bridge"), ("BRIDGE_URL", "ws://bot")]).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("missing TWILIO_API_KEY_SID: ")
                && missing.to_string().contains("TWILIO_AUTH_TOKEN"),
            "{missing}"
        );
    }

    #[test]
    fn agent_config_url_is_a_url_with_a_secret_and_a_bounded_timeout() {
        let base = [
            ("HANDLER", "openai"),
            ("OPENAI_API_KEY", "k"),
            ("TWILIO_API_KEY_SID", "SK0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_KEY_SECRET", "s"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all)
        };
        let secret = ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let url = ("AGENT_CONFIG_URL", "https://api.example.com/voice/config");
        let c = with(&[url, secret, ("AGENT_CONFIG_TIMEOUT_MS", "900")]).unwrap();
        let HandlerKind::OpenAi(agent) = &c.handler else {
            panic!("{:?}", c.handler)
        };
        assert_eq!(agent.config_url.as_deref(), Some(url.1));
        assert_eq!(agent.config_timeout, Duration::from_millis(900));
        let c = with(&[url, secret]).unwrap();
        let HandlerKind::OpenAi(agent) = &c.handler else {
            panic!("{:?}", c.handler)
        };
        assert_eq!(agent.config_timeout, Duration::from_millis(1500));
        assert_eq!(with(&[url]).unwrap_err().variable, "WEBHOOK_SECRET");
        for bad in ["ftp://x", "https://x/?q=1", "x"] {
            let err = with(&[("AGENT_CONFIG_URL", bad), secret]).unwrap_err();
            assert_eq!(err.variable, "AGENT_CONFIG_URL", "{bad}");
        }
        for bad in ["0", "10001", "1.5"] {
            let err = with(&[url, secret, ("AGENT_CONFIG_TIMEOUT_MS", bad)]).unwrap_err();
            assert_eq!(err.variable, "AGENT_CONFIG_TIMEOUT_MS", "{bad}");
        }
    }

    #[test]
    fn the_openai_agent_needs_its_key_which_never_shows() {
        let creds = ("TWILIO_AUTH_TOKEN", "tok");
        let err = parse(&[("HANDLER", "openai"), creds]).unwrap_err();
        assert_eq!(err.variable, "OPENAI_API_KEY");
        let c = parse(&[
            ("HANDLER", "openai"),
            ("OPENAI_API_KEY", "sk-s3cret"),
            ("AGENT_TRANSFER_NUMBER", "+14155550123"),
            creds,
        ])
        .unwrap();
        let HandlerKind::OpenAi(agent) = &c.handler else {
            panic!("{:?}", c.handler)
        };
        use secrecy::ExposeSecret;
        assert_eq!(agent.api_key.expose_secret(), "sk-s3cret");
        assert_eq!(
            c.twilio_auth_token.as_ref().map(|t| t.expose_secret()),
            Some("tok")
        );
        let only = agent.agents.by_name("default").unwrap();
        assert_eq!(
            only.transfer_target("default"),
            Some(&Destination::Number("+14155550123".into()))
        );
        // What is not set takes its default.
        assert_eq!(agent.url, DEFAULT_OPENAI_REALTIME_URL);
        assert_eq!(
            (only.model.as_str(), only.voice.as_str()),
            ("gpt-realtime-2.1", "alloy")
        );
        assert_eq!(only.instructions, DEFAULT_AGENT_INSTRUCTIONS);
        assert_eq!(only.greeting, None);
        assert!(only.dtmf_to_model, "key presses reach the model by default");
        assert_eq!(agent.connect_timeout, Duration::from_secs(5));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("sk-s3cret"), "{shown}");
        assert!(
            shown.contains(
                "handler=openai(wss://api.openai.com model=gpt-realtime-2.1 voice=alloy)"
            ),
            "{shown}"
        );
        for (var, value) in [
            ("AGENT_TRANSFER_NUMBER", "555-1234"),
            ("OPENAI_REALTIME_URL", "https://x"),
            ("AGENT_DTMF", "sometimes"),
            (
                "AGENT_INSTRUCTIONS_FILE",
                "/nonexistent/callvisor-instructions.txt",
            ),
            ("AGENT_CONNECT_TIMEOUT_SECS", "0"),
            ("AGENT_CONNECT_TIMEOUT_SECS", "61"),
            ("AGENT_CONNECT_TIMEOUT_SECS", "2.5"),
            ("AGENT_CONNECT_TIMEOUT_SECS", "soon"),
        ] {
            let err = parse(&[
                ("HANDLER", "openai"),
                ("OPENAI_API_KEY", "k"),
                (var, value),
                creds,
            ])
            .unwrap_err();
            assert_eq!((err.variable, err.value.as_str()), (var, value));
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn railway_domain_gives_the_public_url_unless_set() {
        let c = parse(&[("RAILWAY_PUBLIC_DOMAIN", "x.up.railway.app")]).unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://x.up.railway.app"));
        let c = parse(&[
            ("RAILWAY_PUBLIC_DOMAIN", "x.up.railway.app"),
            ("PUBLIC_URL", "https://mine.test"),
        ])
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://mine.test"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("LIMIT_CONCURRENCY", "abc"),
            ("LIMIT_CONCURRENCY", "0"),
            ("LIMIT_CONCURRENCY", "-3"),
            ("PORT", "99999"),
            ("HOST", "example.com"),
            ("MAX_REDIRECTS", "11"),
            ("START_TIMEOUT_SECS", "0"),
            ("IDLE_TIMEOUT_SECS", "1.5"),
            ("PUBLIC_URL", "calls.example.com"),
            ("PUBLIC_URL", "https://x.test/?a=1"),
            ("WORKERS", "0"),
            ("OUTBOUND_BUFFER_KIB", "2"),
            ("OUTBOUND_BUFFER_KIB", "lots"),
            ("TWILIO_API_BASE_URL", "api.twilio.com"),
            ("TWILIO_ACCOUNT_SID", "CA0123456789abcdef0123456789abcdef"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
            ("TWILIO_API_KEY_SID", "SKnope"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var);
            assert_eq!(err.value, value);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn drain_timeout_follows_railways_draining_seconds_minus_a_margin() {
        assert_eq!(parse(&[]).unwrap().drain_timeout, Duration::from_secs(30));
        let c = parse(&[("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "10")]).unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(8));
        let c = parse(&[("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "1")]).unwrap();
        assert_eq!(c.drain_timeout, Duration::ZERO);
        let c = parse(&[
            ("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "10"),
            ("DRAIN_TIMEOUT_SECS", "3"),
        ])
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
        assert_eq!(
            parse(&[("DRAIN_TIMEOUT_SECS", "x")]).unwrap_err().variable,
            "DRAIN_TIMEOUT_SECS"
        );
        assert_eq!(
            parse(&[("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "-1")])
                .unwrap_err()
                .variable,
            "RAILWAY_DEPLOYMENT_DRAINING_SECONDS"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = parse(&[("PORT", ""), ("PUBLIC_URL", " ")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.public_url, None);
    }
}
