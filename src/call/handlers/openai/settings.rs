//! `HANDLER=openai` as the server sees it: its registry entry ([`APP`]), its settings read from
//! the environment (the OpenAI Realtime connection, the agents: `AGENTS_FILE`, or the `AGENT_*`
//! variables' one agent, and the business's per-call configuration), and the app around them
//! ([`CallApp`]: routing by the number called, its metrics, one [`OpenAiAgent`] per call). A bad
//! value is a startup error naming the variable, as everywhere in [`crate::config`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use secrecy::SecretString;

use super::agents::{Agent, Agents, AgentsError, Destination, Engine, TransferTarget};
use super::metrics::AgentMetrics;
use super::OpenAiAgent;
use crate::call::handler::HandlerFactory;
use crate::call::handlers::{AppEntry, CallApp, Route};
use crate::config::{
    is_e164, url_origin, valid_base_url, valid_ws_url, ConfigError, ENV_WEBHOOK_SECRET,
};
use crate::webhooks::WebhookSecret;

/// `HANDLER=openai`.
pub const APP: AppEntry = AppEntry {
    name: "openai",
    from_env: |get| Ok(Arc::new(AgentConfig::from_env(get)?)),
};

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
/// The caller's words, transcribed for the call records (docs/records.md): on or off.
pub const ENV_AGENT_TRANSCRIPTION: &str = "AGENT_TRANSCRIPTION";
pub const ENV_AGENT_TRANSCRIPTION_MODEL: &str = "AGENT_TRANSCRIPTION_MODEL";
/// In the official SDK's list (`AudioTranscription.model`), and OpenAI's current one.
pub const DEFAULT_AGENT_TRANSCRIPTION_MODEL: &str = "gpt-live-transcribe";
/// The name of the environment variables' agent, and of its `AGENT_TRANSFER_NUMBER` target.
pub const ENV_AGENT_NAME: &str = "default";
/// The variables that configure one agent, and the agents file's key each becomes: with
/// `AGENTS_FILE` set, any of them is an error (two sources of truth). `OPENAI_MODEL` is not
/// among them: it stays the model of every agent that names none.
/// GPT-Live (`engine = "live"`): its WebSocket, the one-agent setup's engine and backend model,
/// and the stale-audio rule's threshold (docs/apps.md).
pub const ENV_OPENAI_LIVE_URL: &str = "OPENAI_LIVE_URL";
pub const DEFAULT_OPENAI_LIVE_URL: &str = "wss://api.openai.com/v1/live/sessions";
pub const ENV_AGENT_ENGINE: &str = "AGENT_ENGINE";
pub const ENV_AGENT_BACKEND_MODEL: &str = "AGENT_BACKEND_MODEL";
pub const ENV_LIVE_CLEAR_AHEAD_MS: &str = "LIVE_CLEAR_AHEAD_MS";
pub const DEFAULT_LIVE_CLEAR_AHEAD_MS: u64 = 300;
pub const PER_AGENT_VARIABLES: [(&str, &str); 8] = [
    (ENV_AGENT_ENGINE, "engine"),
    (ENV_AGENT_BACKEND_MODEL, "backend_model"),
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
    /// `OPENAI_LIVE_URL`: GPT-Live's WebSocket (no query: the model goes in `session.start`).
    pub live_url: String,
    /// `LIVE_CLEAR_AHEAD_MS`: a live agent clears Twilio's queued audio when the caller talks and
    /// more than this much of it has not played.
    pub live_clear_ahead: Duration,
    /// `AGENT_TRANSCRIPTION_MODEL` (`None`: `AGENT_TRANSCRIPTION=off`): the model transcribing
    /// the caller, for the call records' transcripts.
    pub transcription: Option<String>,
}

impl AgentConfig {
    /// `HANDLER=openai`'s variables (empty values already count as unset in `get`).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
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
        let transcription = match get(ENV_AGENT_TRANSCRIPTION)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => true,
            Some(v) if v == "on" => true,
            Some(v) if v == "off" => false,
            Some(v) => {
                return Err(ConfigError {
                    variable: ENV_AGENT_TRANSCRIPTION,
                    value: v,
                    expected: "on (the caller's words are transcribed for the call records) or off"
                        .into(),
                })
            }
        };
        let transcription = transcription.then(|| {
            get(ENV_AGENT_TRANSCRIPTION_MODEL).map_or_else(
                || DEFAULT_AGENT_TRANSCRIPTION_MODEL.to_string(),
                |m| m.trim().to_string(),
            )
        });
        let live_url = match get(ENV_OPENAI_LIVE_URL) {
            Some(v) if valid_ws_url(v.trim()) && !v.contains('?') => v.trim().to_string(),
            Some(v) => {
                return Err(ConfigError {
                    variable: ENV_OPENAI_LIVE_URL,
                    value: v,
                    expected: "a ws:// or wss:// URL without a query (GPT-Live takes none)".into(),
                })
            }
            None => DEFAULT_OPENAI_LIVE_URL.to_string(),
        };
        let live_clear_ahead = Duration::from_millis(match get(ENV_LIVE_CLEAR_AHEAD_MS) {
            None => DEFAULT_LIVE_CLEAR_AHEAD_MS,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if (20..=60_000).contains(&ms) => ms,
                _ => {
                    return Err(ConfigError {
                        variable: ENV_LIVE_CLEAR_AHEAD_MS,
                        value: v,
                        expected: "milliseconds from 20 to 60000".into(),
                    })
                }
            },
        });
        Ok(AgentConfig {
            live_url,
            live_clear_ahead,
            transcription,
            api_key,
            url,
            config_url,
            config_timeout,
            connect_timeout,
            agents: Arc::new(agents),
            webhook_secret,
        })
    }
}

impl CallApp for AgentConfig {
    fn name(&self) -> &'static str {
        APP.name
    }

    /// The model's origin, and the one agent's model and voice, or the agents file and its
    /// agents' names.
    fn describe(&self) -> String {
        match (self.agents.file(), self.agents.iter().next()) {
            (None, Some(only)) => format!(
                "{} model={} voice={}",
                url_origin(&self.url),
                only.model,
                only.voice
            ),
            (file, _) => format!(
                "{} agents_file={} agents={}",
                url_origin(&self.url),
                file.map_or_else(|| "-".into(), |f| f.display().to_string()),
                self.agents
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// The agent for the number called, else the default agent; with neither, the number is not
    /// in service.
    fn route(&self, to: &str) -> Route<'_> {
        match self.agents.for_number(to) {
            Some(agent) => Route::Agent(agent.name.as_str()),
            None => Route::NotInService,
        }
    }

    /// Registers the `callvisor_agent_*` metrics; each call gets its own [`OpenAiAgent`].
    fn handler_factory(self: Arc<Self>, registry: &mut Registry) -> HandlerFactory {
        let metrics = AgentMetrics::register(registry);
        Arc::new(move || Box::new(OpenAiAgent::new(self.clone(), metrics.clone())))
    }
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
    let webhook_secret = crate::config::webhook_secret(get).map_err(variable)?;
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
    match get(ENV_AGENT_ENGINE).map(|v| v.trim().to_ascii_lowercase()) {
        None => {}
        Some(v) if v == "realtime" => {}
        Some(v) if v == "live" => {
            agent.engine = Engine::Live;
            agent.backend_model = Some(
                get(ENV_AGENT_BACKEND_MODEL)
                    .map(|m| m.trim().to_string())
                    .ok_or(ConfigError {
                        variable: ENV_AGENT_BACKEND_MODEL,
                        value: String::new(),
                        expected: "AGENT_ENGINE=live delegates the agent's tools to a Responses \
                                   model: set it (e.g. gpt-5.5)"
                            .into(),
                    })?,
            );
            if get(ENV_OPENAI_MODEL).is_none() {
                agent.model = super::agents::DEFAULT_LIVE_MODEL.to_string();
            }
        }
        Some(v) => {
            return Err(ConfigError {
                variable: ENV_AGENT_ENGINE,
                value: v,
                expected: "realtime (OpenAI's Realtime API) or live (GPT-Live)".into(),
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// The running app's settings: `HANDLER=openai`'s.
    fn agent_of(config: &Config) -> &AgentConfig {
        config
            .handler
            .downcast_ref()
            .unwrap_or_else(|| panic!("not HANDLER=openai: {:?}", config.handler))
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
            agent_of(&parse(&all).unwrap()).clone()
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
        let agent = agent_of(&c);
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
        let agent = agent_of(&good);
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
        let agent = agent_of(&c);
        assert_eq!(agent.config_url.as_deref(), Some(url.1));
        assert_eq!(agent.config_timeout, Duration::from_millis(900));
        let c = with(&[url, secret]).unwrap();
        let agent = agent_of(&c);
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
        let agent = agent_of(&c);
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
}
