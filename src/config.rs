//! Typed configuration, read once at start from the environment (and `.env` when present).
//!
//! Every variable has an `ENV_*` name beside its `DEFAULT_*` value and one check; the parser takes
//! a lookup function so tests can feed it a map. A bad value is a startup error naming the variable.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::call::handlers::{self, CallApp};
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
/// The app every call runs: one of the registry's names (`crate::call::handlers::APPS`), each
/// app reading its own variables.
pub const ENV_HANDLER: &str = "HANDLER";

/// `whsec_<base64>`: signs every request callvisor makes to the business (Standard Webhooks).
pub const ENV_WEBHOOK_SECRET: &str = "WEBHOOK_SECRET";

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
    /// The app every call runs (`HANDLER`), with its settings.
    pub handler: Arc<dyn CallApp>,
    /// Call records (`CALL_EVENTS_URL`); `None`: none are made.
    pub records: Option<crate::records::RecordSettings>,
    /// `RECORD_CALLS`: Twilio records each call (`None`: it does not).
    pub recording: Option<crate::records::recording::RecordingSettings>,
    /// Outbound calls: `API_TOKEN` (`POST /calls`), `OUTBOUND_TIMEOUT_SECS`,
    /// `AMD_GREETING_WAIT_MS`.
    pub outbound: crate::outbound::OutboundSettings,
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
        let parse = |name: &'static str, expected: &'static str, ok: &dyn Fn(&str) -> bool| {
            parse_var(&get, name, expected, ok)
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

        let app = match parse_var(&get, ENV_HANDLER, handlers::names(), |v| {
            handlers::find(v).is_some()
        })? {
            Some(name) => handlers::find(&name).expect("checked above"),
            None => &handlers::APPS[0],
        };
        let handler = (app.from_env)(&get)?;
        if handler.needs_call_control() && twilio_api_key.is_none() && twilio_auth_token.is_none() {
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

        let outbound = crate::outbound::settings_from(&get)?;
        if outbound.api_token.is_some() {
            // Placing calls needs the account to place them in, and Twilio's callbacks about
            // them (which hang machines up) must be signed.
            if twilio_account_sid.is_none() {
                return Err(ConfigError {
                    variable: ENV_TWILIO_ACCOUNT_SID,
                    value: String::new(),
                    expected: "API_TOKEN places calls through Twilio's REST API, in this account \
                               (AC followed by 32 hex digits)"
                        .into(),
                });
            }
            if twilio_auth_token.is_none() {
                return Err(ConfigError {
                    variable: ENV_TWILIO_AUTH_TOKEN,
                    value: String::new(),
                    expected: "API_TOKEN places calls, and Twilio's callbacks about them \
                               (/call-status, /amd-status, the webhook) must be signed with \
                               the account's auth token"
                        .into(),
                });
            }
        }

        Ok(Config {
            outbound,
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
             replica={} auth={} handler={}{} call_control={} records={} recording={} outbound={}",
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
            match self.handler.describe() {
                about if about.is_empty() => about,
                about => format!("({about})"),
            },
            self.rest_credentials()
                .map_or("off".to_string(), |c| c.describe()),
            self.records.as_ref().map_or("off".to_string(), |r| format!(
                "{}{}",
                url_origin(&r.delivery.url),
                if r.delivery.spool_dir.is_some() {
                    " (spooled)"
                } else {
                    ""
                }
            )),
            self.recording
                .as_ref()
                .map_or("off", |r| r.channels.as_str()),
            if self.outbound.api_token.is_some() {
                format!(
                    "on(timeout={}s amd_greeting_wait={}ms)",
                    self.outbound.timeout.as_secs(),
                    self.outbound.amd_greeting_wait.as_millis()
                )
            } else {
                "off".to_string()
            },
        )
    }
}

/// A variable's trimmed value when `ok` accepts it, `None` when it is unset, else the error
/// naming it with what was `expected`. `get` counts empty values as unset, as the `get` that
/// [`Config::from_lookup`] hands every app does.
pub(crate) fn parse_var(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    expected: impl Into<Cow<'static, str>>,
    ok: impl Fn(&str) -> bool,
) -> Result<Option<String>, ConfigError> {
    match get(name) {
        Some(v) if ok(v.trim()) => Ok(Some(v.trim().to_string())),
        Some(v) => Err(ConfigError {
            variable: name,
            value: v,
            expected: expected.into(),
        }),
        None => Ok(None),
    }
}

/// An absolute `http://` or `https://` URL with a host and no query.
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

/// A whole-number variable within `range`, `default` when unset; else the error naming it.
pub(crate) fn whole_number(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ConfigError {
                variable: name,
                value: v,
                expected: format!("a whole number from {} to {}", range.start(), range.end())
                    .into(),
            }),
        },
    }
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
pub(crate) fn valid_ws_url(v: &str) -> bool {
    let rest = v.strip_prefix("wss://").or_else(|| v.strip_prefix("ws://"));
    rest.is_some_and(|r| {
        !r.split(['/', '?']).next().unwrap_or("").is_empty() && !v.contains(char::is_whitespace)
    })
}

/// Scheme and host of a URL, for logs: its path and query may carry a credential.
pub(crate) fn url_origin(url: &str) -> &str {
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

    /// Every variable outside the apps' own (each app's module tests its own), each set to
    /// something other than its default, and each found in the Config: a variable whose parsing
    /// is lost fails here. (The two Railway fallbacks, which PUBLIC_URL and DRAIN_TIMEOUT_SECS
    /// override, have tests of their own.)
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
        assert_eq!(c.handler.name(), "bridge");
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

    /// Each app's own variables are its module's tests (`call::handlers::*`); the registry's
    /// names are `call::handlers`' tests.
    #[test]
    fn the_app_is_chosen_by_handler_and_an_app_that_ends_calls_needs_call_control() {
        let echo = parse(&[]).unwrap();
        assert_eq!(echo.handler.name(), "echo");
        assert!(!echo.handler.needs_call_control());
        assert!(echo.to_string().contains(" handler=echo call_control=off"));
        let err = parse(&[("HANDLER", "agent")]).unwrap_err();
        assert_eq!(err.variable, "HANDLER");
        let c = parse(&[
            ("HANDLER", " bridge "),
            ("BRIDGE_URL", "ws://bot"),
            ("TWILIO_AUTH_TOKEN", "tok"),
        ])
        .unwrap();
        assert_eq!(c.handler.name(), "bridge");
        assert!(c.handler.needs_call_control());
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
    fn placing_calls_needs_the_account_and_signed_callbacks() {
        let token = ("API_TOKEN", "s3cr3t-api-token-for-tests");
        let account = ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef");
        let auth = ("TWILIO_AUTH_TOKEN", "tok");
        assert_eq!(
            parse(&[token, auth]).unwrap_err().variable,
            "TWILIO_ACCOUNT_SID"
        );
        assert_eq!(
            parse(&[token, account]).unwrap_err().variable,
            "TWILIO_AUTH_TOKEN"
        );
        let c = parse(&[
            token,
            account,
            auth,
            ("OUTBOUND_TIMEOUT_SECS", "7"),
            ("AMD_GREETING_WAIT_MS", "2500"),
        ])
        .unwrap();
        let line = c.to_string();
        assert!(
            line.ends_with(" outbound=on(timeout=7s amd_greeting_wait=2500ms)"),
            "{line}"
        );
        assert!(!line.contains("s3cr3t"), "{line}");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(parse(&[]).unwrap().to_string().ends_with(" outbound=off"));
        assert_eq!(
            parse(&[("API_TOKEN", "short")]).unwrap_err().variable,
            "API_TOKEN"
        );
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
