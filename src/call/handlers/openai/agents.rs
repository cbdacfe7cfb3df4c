//! The agents a deployment runs (`AGENTS_FILE`, TOML): who answers which number, with which
//! prompt, voice, tools and transfer targets (docs/agents.md).
//!
//! ```toml
//! [defaults]                    # any agent key but numbers and default; every agent inherits it
//! voice = "marin"
//!
//! [agents.support]              # letters, digits, '-' and '_'
//! numbers = ["+15550001111"]    # the webhook's `To` it answers
//! default = true                # answers every number no agent names (at most one agent)
//! instructions_file = "prompts/support.md"   # relative to this file
//! transfer_targets = { sales = "+15550002222" }
//! ```
//!
//! The file is checked completely when it is loaded: the first problem is one line naming the
//! file, the line, the agent, the key and what is wrong ([`AgentsError`]), and nothing of a bad
//! file is ever used. An agent's own key replaces the same key of `[defaults]` wholesale (its
//! `tools` replace the default `tools`; `instructions` and `instructions_file` count as one key).
//! What a file sets nowhere takes today's defaults: `OPENAI_MODEL`'s value, `AGENT_VOICE`'s and
//! `AGENT_INSTRUCTIONS`' defaults, key presses on, server VAD with the API's settings.
//!
//! Secrets never live in the file: an MCP server's headers name environment variables
//! (`headers_from_env`), read at load into [`SecretString`]s that neither `Debug` nor the routing
//! table print.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Map as JsonMap, Value as Json};
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use super::settings::{DEFAULT_AGENT_INSTRUCTIONS, DEFAULT_AGENT_VOICE};
use crate::config::is_e164;

/// The model's own tools: a file's tool may not take their names.
pub const BUILT_IN_TOOLS: [&str; 2] = ["end_call", "transfer_call"];
/// A tool's `timeout_ms` when the file sets none.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 5_000;
/// The longest `timeout_ms`: the caller waits in silence meanwhile.
pub const MAX_TOOL_TIMEOUT_MS: u64 = 30_000;
/// The longest agent, tool, target or MCP server name (the Realtime API's limit for tool names;
/// the same for the others, which show up in logs, metrics and the stream token).
pub const MAX_NAME_LEN: usize = 64;
/// The longest VAD duration (`prefix_padding_ms`, `silence_duration_ms`).
pub const MAX_VAD_MS: u64 = 10_000;

const AGENT_KEYS: &str = "numbers, default, instructions, instructions_file, greeting, voice, \
                          model, turn_detection, noise_reduction, transfer_targets, dtmf, tools, mcp, \
                          engine, backend_model";
/// A live agent's model when it names none (`OPENAI_MODEL` is the Realtime engine's).
pub const DEFAULT_LIVE_MODEL: &str = "gpt-live-1";
const TOOL_KEYS: &str = "name, description, url, timeout_ms, parameters";
const MCP_KEYS: &str =
    "server_label, server_url, allowed_tools, require_approval, headers_from_env";

/// Every agent of a deployment, and which answers which number.
#[derive(Debug)]
pub struct Agents {
    /// Where they come from: the agents file, or `None` for the environment variables' one
    /// agent.
    file: Option<PathBuf>,
    /// In the file's order (the routing table's).
    agents: Vec<Arc<Agent>>,
    /// Every number an agent names (E.164), to its agent.
    numbers: HashMap<String, Arc<Agent>>,
    /// The agent that answers the numbers no agent names.
    default: Option<Arc<Agent>>,
}

/// One agent: everything a call to it needs, checked and typed.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `[agents.NAME]`: letters, digits, `-`, `_`. In logs, metrics and the stream token.
    pub name: String,
    /// The numbers (E.164, the webhook's `To`) it answers, in the file's order.
    pub numbers: Vec<String>,
    /// `default = true`: it answers every number no agent names.
    pub is_default: bool,
    /// The system prompt, already read from `instructions_file` when the file names one.
    /// `{{name}}` placeholders are the runtime's to fill.
    pub instructions: String,
    /// Where `instructions` was read from (resolved against the agents file's folder).
    pub instructions_file: Option<PathBuf>,
    /// When set, the agent speaks first, with this.
    pub greeting: Option<String>,
    pub voice: String,
    /// The Realtime model (`?model=`).
    pub model: String,
    pub turn_detection: TurnDetection,
    /// `None`: no input noise reduction (the API's default).
    pub noise_reduction: Option<NoiseReduction>,
    /// Where `transfer_call` may send the caller, by name, in the file's order. Empty: the agent
    /// has no `transfer_call` tool.
    pub transfer_targets: Vec<TransferTarget>,
    /// Key presses reach the model as "The caller pressed 5" (`dtmf`, default on).
    pub dtmf_to_model: bool,
    /// The business's tools, in the file's order; each is a POST to its `url`.
    pub tools: Vec<Tool>,
    /// Remote MCP servers the Realtime API calls itself.
    pub mcp: Vec<McpServer>,
    /// Which of OpenAI's voice APIs runs it (`engine`).
    pub engine: Engine,
    /// `engine = "live"`: the Responses model its tools are delegated to (required there).
    pub backend_model: Option<String>,
}

/// Which of OpenAI's voice APIs an agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The Realtime API (the default).
    #[default]
    Realtime,
    /// GPT-Live.
    Live,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Realtime => "realtime",
            Engine::Live => "live",
        }
    }
}

/// How the model decides the caller has finished speaking (`turn_detection`).
#[derive(Debug, Clone, PartialEq)]
pub enum TurnDetection {
    /// Silence-based; each `None` leaves the API's default.
    ServerVad {
        /// 0.0 to 1.0: how loud speech must be.
        threshold: Option<f64>,
        /// Audio kept from before speech started.
        prefix_padding_ms: Option<u64>,
        /// Silence that ends a turn.
        silence_duration_ms: Option<u64>,
    },
    /// Meaning-based: waits longer when the caller sounds unfinished.
    SemanticVad { eagerness: Eagerness },
}

/// `semantic_vad`'s `eagerness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eagerness {
    Low,
    Medium,
    High,
    /// The API's default.
    Auto,
}

/// `noise_reduction`: which input noise reduction the API applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseReduction {
    /// Headsets, handsets: the microphone near the mouth.
    NearField,
    /// Speakerphones, conference rooms.
    FarField,
}

/// A named destination of `transfer_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferTarget {
    /// What the model passes as `target` (`transfer_call`'s enum).
    pub name: String,
    pub destination: Destination,
}

/// Where a transfer dials: `<Dial><Number>` or `<Dial><Sip>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// E.164.
    Number(String),
    /// `sip:user@host[:port][;params]`.
    Sip(String),
}

/// A tool that calls the business's systems: the model's call is POSTed to `url`, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `^[a-zA-Z0-9_-]{1,64}$`, never `end_call` or `transfer_call`, unique in its agent.
    pub name: String,
    /// What the model reads to decide when to call it.
    pub description: String,
    /// `http://` or `https://`.
    pub url: String,
    /// How long the POST may take before the model hears an error (1 ms to 30 s, default 5 s).
    pub timeout: Duration,
    /// A JSON Schema object (`type = "object"`, `properties` an object): the tool's arguments.
    pub parameters: Json,
}

/// A remote MCP server the Realtime API calls itself (a `{"type": "mcp"}` tool).
#[derive(Debug, Clone)]
pub struct McpServer {
    /// Unique in its agent: letters, digits, `-`, `_`.
    pub server_label: String,
    /// `http://` or `https://`.
    pub server_url: String,
    /// `None`: every tool the server offers.
    pub allowed_tools: Option<Vec<String>>,
    pub require_approval: RequireApproval,
    /// Headers sent to the server, their values read from the environment at load.
    pub headers: Vec<McpHeader>,
}

/// One header of an MCP server (`headers_from_env`).
#[derive(Debug, Clone)]
pub struct McpHeader {
    /// The HTTP header's name (e.g. `Authorization`).
    pub name: String,
    /// The environment variable its value came from.
    pub env: String,
    /// Never logged nor printed.
    pub value: SecretString,
}

/// `require_approval`: whether the API asks before each MCP tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireApproval {
    /// The default: on a phone call there is nobody to approve a call mid-conversation.
    Never,
    Always,
}

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The file as a whole, or one of its top-level keys.
    File,
    /// `[defaults]`.
    Defaults,
    /// `[agents.NAME]`.
    Agent(String),
}

/// Why an agents file was refused: one line naming the file, the line, the agent, the key and
/// what is wrong, e.g.
/// `agents.toml:14: agent `support`, key `tools[0].name`: "end_call" is a built-in tool...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsError {
    pub file: PathBuf,
    /// 1-based; `None` when the file could not be read.
    pub line: Option<usize>,
    pub place: Place,
    /// The key's path within its table (`tools[0].timeout_ms`), when one key is at fault.
    pub key: Option<String>,
    /// What is wrong, and what was expected.
    pub problem: String,
}

impl AgentsError {
    /// The line without the file's name: `line 14: agent `support`, key `voice`: ...`.
    pub fn detail(&self) -> String {
        let mut out = String::new();
        if let Some(line) = self.line {
            let _ = write!(out, "line {line}: ");
        }
        out.push_str(&self.location());
        out.push_str(&self.problem);
        out
    }

    /// `agent `x`, key `y`: ` (or less, down to nothing).
    fn location(&self) -> String {
        let place = match &self.place {
            Place::File => None,
            Place::Defaults => Some("[defaults]".to_string()),
            Place::Agent(name) => Some(format!("agent `{}`", name.escape_debug())),
        };
        let key = self
            .key
            .as_ref()
            .map(|k| format!("key `{}`", k.escape_debug()));
        match (place, key) {
            (Some(p), Some(k)) => format!("{p}, {k}: "),
            (Some(one), None) | (None, Some(one)) => format!("{one}: "),
            (None, None) => String::new(),
        }
    }
}

impl fmt::Display for AgentsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}{}", self.location(), self.problem)
    }
}

impl std::error::Error for AgentsError {}

impl Agents {
    /// Reads and checks the agents file at `file`. `env` reads the environment (the headers of
    /// `headers_from_env`); `default_model` is the model of agents that name none
    /// (`OPENAI_MODEL`'s value).
    pub fn load(
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        default_model: &str,
    ) -> Result<Agents, AgentsError> {
        let text = std::fs::read_to_string(file).map_err(|e| AgentsError {
            file: file.to_path_buf(),
            line: None,
            place: Place::File,
            key: None,
            problem: format!("cannot be read: {e}"),
        })?;
        Self::parse(&text, file, env, default_model)
    }

    /// [`Agents::load`] of `text`, as if read from `file` (`instructions_file` paths are relative
    /// to `file`'s folder).
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        default_model: &str,
    ) -> Result<Agents, AgentsError> {
        // A bare file name's parent is "": paths join onto it unchanged (the working folder).
        let dir = file.parent().unwrap_or(Path::new(""));
        let parser = Parser {
            file,
            dir,
            text,
            env,
        };
        parser.document(default_model)
    }

    /// The one agent of a deployment without an agents file (the environment variables'): it
    /// answers every number.
    pub fn single(mut agent: Agent) -> Agents {
        agent.is_default = true;
        let agent = Arc::new(agent);
        Agents {
            file: None,
            numbers: agent
                .numbers
                .iter()
                .map(|n| (n.clone(), agent.clone()))
                .collect(),
            default: Some(agent.clone()),
            agents: vec![agent],
        }
    }

    /// The agent that answers a call to `to` (the webhook's `To`): the one that names it
    /// (exactly), else the default agent, else none (the number is not in service).
    pub fn for_number(&self, to: &str) -> Option<&Arc<Agent>> {
        self.numbers.get(to).or(self.default.as_ref())
    }

    /// The agent called `name` (`[agents.NAME]`; `default` for the environment variables' one).
    pub fn by_name(&self, name: &str) -> Option<&Arc<Agent>> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The agent that answers the numbers no agent names.
    pub fn default_agent(&self) -> Option<&Arc<Agent>> {
        self.default.as_ref()
    }

    /// Every agent, in the file's order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.iter()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Always false: a file without agents is refused.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agents file they came from; `None`: the environment variables.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The first tool with a URL, if any: such a tool needs `WEBHOOK_SECRET` to sign its
    /// requests.
    pub fn first_tool(&self) -> Option<(&Agent, &Tool)> {
        self.agents
            .iter()
            .find_map(|a| a.tools.first().map(|t| (a.as_ref(), t)))
    }

    /// What `callvisor agents check` prints: number -> agent, the default, then each agent's
    /// settings, tools and MCP servers (header names only; URLs without their query, which may
    /// carry a credential).
    pub fn routing_table(&self) -> String {
        let mut out = String::new();
        let source = self
            .file
            .as_ref()
            .map_or("the AGENT_* variables".to_string(), |f| {
                f.display().to_string()
            });
        let n = self.agents.len();
        let _ = writeln!(out, "{source}: {n} agent{}", if n == 1 { "" } else { "s" });
        out.push_str("\nrouting (the webhook's To):\n");
        let width = self
            .agents
            .iter()
            .flat_map(|a| a.numbers.iter().map(String::len))
            .max()
            .unwrap_or(0)
            .max("any other number".len());
        for agent in &self.agents {
            for number in &agent.numbers {
                let _ = writeln!(out, "  {number:<width$}  -> {}", agent.name);
            }
        }
        match &self.default {
            Some(agent) => {
                let _ = writeln!(
                    out,
                    "  {:<width$}  -> {} (default)",
                    "any other number", agent.name
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {:<width$}  -> none: the caller hears that the number is not in service",
                    "any other number"
                );
            }
        }
        for agent in &self.agents {
            out.push('\n');
            agent.describe(&mut out);
        }
        out
    }
}

impl Agent {
    /// An agent with these settings and every other at its default (no greeting, no tools, no
    /// transfer targets, key presses on, server VAD): the environment variables' agent, tests.
    pub fn basic(name: &str, model: &str, voice: &str, instructions: &str) -> Agent {
        Agent {
            name: name.to_string(),
            numbers: Vec::new(),
            is_default: false,
            instructions: instructions.to_string(),
            instructions_file: None,
            greeting: None,
            voice: voice.to_string(),
            model: model.to_string(),
            turn_detection: TurnDetection::default(),
            noise_reduction: None,
            transfer_targets: Vec::new(),
            dtmf_to_model: true,
            tools: Vec::new(),
            mcp: Vec::new(),
            engine: Engine::Realtime,
            backend_model: None,
        }
    }

    /// The transfer target called `name`.
    pub fn transfer_target(&self, name: &str) -> Option<&Destination> {
        self.transfer_targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| &t.destination)
    }

    /// The file's tool called `name`.
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    fn describe(&self, out: &mut String) {
        let mut head = format!("agent {}", self.name);
        if self.is_default {
            head.push_str(" (default)");
        }
        if self.numbers.is_empty() && !self.is_default {
            head.push_str(" (no number routes to it)");
        }
        let _ = writeln!(out, "{head}");
        let _ = writeln!(
            out,
            "  model {}, voice {}, turn detection {}, noise reduction {}, key presses {}",
            self.model,
            self.voice,
            self.turn_detection,
            self.noise_reduction.map_or("none", |n| n.as_str()),
            if self.dtmf_to_model { "on" } else { "off" },
        );
        let from = match &self.instructions_file {
            Some(path) => format!(" from {}", path.display()),
            None if self.instructions == DEFAULT_AGENT_INSTRUCTIONS => {
                " (the built-in default)".into()
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  instructions: {} characters{from}",
            self.instructions.chars().count()
        );
        if let Some(greeting) = &self.greeting {
            let _ = writeln!(out, "  greeting: {greeting:?}");
        }
        if !self.transfer_targets.is_empty() {
            let targets: Vec<String> = self
                .transfer_targets
                .iter()
                .map(|t| format!("{} -> {}", t.name, t.destination))
                .collect();
            let _ = writeln!(out, "  transfer targets: {}", targets.join(", "));
        }
        for tool in &self.tools {
            let _ = writeln!(
                out,
                "  tool {}: POST {}, timeout {} ms",
                tool.name,
                without_query(&tool.url),
                tool.timeout.as_millis()
            );
        }
        for server in &self.mcp {
            let headers: Vec<&str> = server.headers.iter().map(|h| h.name.as_str()).collect();
            let _ = writeln!(
                out,
                "  mcp {}: {}, tools {}, approval {}, headers {}",
                server.server_label,
                without_query(&server.server_url),
                server
                    .allowed_tools
                    .as_ref()
                    .map_or("all".to_string(), |t| t.join(", ")),
                server.require_approval.as_str(),
                if headers.is_empty() {
                    "none".to_string()
                } else {
                    headers.join(", ")
                },
            );
        }
    }
}

impl Default for TurnDetection {
    /// Server VAD with the API's settings: what the agent sent before agents files.
    fn default() -> Self {
        TurnDetection::ServerVad {
            threshold: None,
            prefix_padding_ms: None,
            silence_duration_ms: None,
        }
    }
}

impl TurnDetection {
    /// The `session.audio.input.turn_detection` object of a `session.update`.
    pub fn to_json(&self) -> Json {
        match self {
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
            } => {
                let mut vad = json!({"type": "server_vad"});
                if let Some(t) = threshold {
                    vad["threshold"] = json!(t);
                }
                if let Some(ms) = prefix_padding_ms {
                    vad["prefix_padding_ms"] = json!(ms);
                }
                if let Some(ms) = silence_duration_ms {
                    vad["silence_duration_ms"] = json!(ms);
                }
                vad
            }
            TurnDetection::SemanticVad { eagerness } => {
                json!({"type": "semantic_vad", "eagerness": eagerness.as_str()})
            }
        }
    }
}

impl fmt::Display for TurnDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
            } => {
                f.write_str("server_vad")?;
                if let Some(t) = threshold {
                    write!(f, " threshold={t}")?;
                }
                if let Some(ms) = prefix_padding_ms {
                    write!(f, " prefix_padding_ms={ms}")?;
                }
                if let Some(ms) = silence_duration_ms {
                    write!(f, " silence_duration_ms={ms}")?;
                }
                Ok(())
            }
            TurnDetection::SemanticVad { eagerness } => {
                write!(f, "semantic_vad eagerness={}", eagerness.as_str())
            }
        }
    }
}

impl Eagerness {
    pub fn as_str(self) -> &'static str {
        match self {
            Eagerness::Low => "low",
            Eagerness::Medium => "medium",
            Eagerness::High => "high",
            Eagerness::Auto => "auto",
        }
    }
}

impl NoiseReduction {
    /// The API's `noise_reduction.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoiseReduction::NearField => "near_field",
            NoiseReduction::FarField => "far_field",
        }
    }
}

impl RequireApproval {
    /// The API's `require_approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequireApproval::Never => "never",
            RequireApproval::Always => "always",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Number(n) => f.write_str(n),
            Destination::Sip(uri) => f.write_str(uri),
        }
    }
}

/// `callvisor agents check [FILE]`: loads the agents file (FILE, else `AGENTS_FILE`) with every
/// check the server makes at start, the environment's included (`headers_from_env`,
/// `WEBHOOK_SECRET`, no `AGENT_*` variables beside a file), and prints the routing table: exit 0,
/// or the one error line and exit 2. `args` are the arguments after `agents`.
pub fn main(args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: callvisor agents check [FILE] (FILE defaults to $AGENTS_FILE)";
    let file = match args {
        [check] if check == "check" => None,
        [check, file] if check == "check" && !file.starts_with('-') => Some(file.clone()),
        _ => {
            eprintln!("callvisor agents: {USAGE}");
            return ExitCode::from(2);
        }
    };
    let _ = dotenvy::dotenv();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(file) = file.or_else(|| env(super::settings::ENV_AGENTS_FILE)) else {
        eprintln!("callvisor agents check: no FILE given and AGENTS_FILE is not set");
        return ExitCode::from(2);
    };
    match super::settings::agents_setup(&env, Some(&file)) {
        Ok(setup) => {
            print!("{}", setup.agents.routing_table());
            match (setup.agents.first_tool(), setup.webhook_secret.is_some()) {
                (Some(_), _) => println!("\nWEBHOOK_SECRET: set; tool requests are signed"),
                (None, true) => println!("\nWEBHOOK_SECRET: set; no tool uses it yet"),
                (None, false) => println!("\nWEBHOOK_SECRET: not needed (no tools)"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// A URL for display: its query (which may hold a credential) elided.
fn without_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

/// `[A-Za-z0-9_-]{1,64}`: agent, tool, transfer target and MCP server names.
fn is_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An absolute `http://` or `https://` URL with a host.
fn is_http_url(s: &str) -> bool {
    if s.contains(char::is_whitespace) {
        return false;
    }
    match s.parse::<actix_web::http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

/// `sip:user@host[:port][;params][?headers]`, as Twilio's `<Sip>` dials it.
fn is_sip_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sip:") else {
        return false;
    };
    if s.contains(|c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c)) {
        return false;
    }
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    let host_port = host.split([';', '?']).next().unwrap_or("");
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (h, Some(p)),
        _ => (host_port, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    !user.is_empty()
        && !user.contains('@')
        && host_ok
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// An HTTP header name (RFC 9110 token).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A POSIX-ish environment variable name.
fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Model and voice names: they travel in a URL and in JSON.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What the values of one table set (an agent's, or `[defaults]`): `None` is "not set here".
#[derive(Default, Clone)]
struct Settings {
    numbers: Option<Vec<Spanned<String>>>,
    default: Option<Spanned<bool>>,
    instructions: Option<(String, Option<PathBuf>)>,
    greeting: Option<String>,
    voice: Option<String>,
    model: Option<String>,
    turn_detection: Option<TurnDetection>,
    noise_reduction: Option<NoiseReduction>,
    transfer_targets: Option<Vec<TransferTarget>>,
    dtmf: Option<bool>,
    tools: Option<Vec<Tool>>,
    mcp: Option<Vec<McpServer>>,
    engine: Option<Engine>,
    backend_model: Option<String>,
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Parser<'a> {
    file: &'a Path,
    /// `instructions_file` is relative to it.
    dir: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// A table being read: where it is, for the error lines.
struct Scope<'p, 'a> {
    parser: &'p Parser<'a>,
    place: Place,
}

impl Parser<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        place: Place,
        key: Option<String>,
        span: &Range<usize>,
        problem: impl Into<String>,
    ) -> AgentsError {
        AgentsError {
            file: self.file.to_path_buf(),
            line: Some(self.line(span)),
            place,
            key,
            problem: problem.into(),
        }
    }

    fn document(&self, default_model: &str) -> Result<Agents, AgentsError> {
        let root = DeTable::parse(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            // The offending text (`duplicate key` says no more than that), when it is short.
            let at = self.text.get(span.clone()).unwrap_or("").trim();
            if !at.is_empty() && at.len() <= 40 && !at.contains('\n') {
                let _ = write!(message, " (at `{at}`)");
            }
            self.error(
                Place::File,
                None,
                &span,
                format!("not valid TOML: {message}"),
            )
        })?;
        let top = Scope {
            parser: self,
            place: Place::File,
        };
        let mut defaults = Settings::default();
        let mut agents_table = None;
        for (key, value) in root.get_ref() {
            match key.get_ref().as_ref() {
                "defaults" => {
                    let table = top.table("defaults", value)?;
                    let scope = Scope {
                        parser: self,
                        place: Place::Defaults,
                    };
                    defaults = scope.settings(table, false)?;
                }
                "agents" => agents_table = Some((top.table("agents", value)?, value.span())),
                other => {
                    return Err(top.err(
                        other,
                        &key.span(),
                        "unknown key (the file has [defaults] and [agents.NAME] tables)",
                    ))
                }
            }
        }
        let Some((table, _)) = agents_table.clone().filter(|(t, _)| !t.is_empty()) else {
            let mut e = self.error(
                Place::File,
                None,
                &agents_table.as_ref().map_or(0..0, |(_, s)| s.clone()),
                "no agent: add at least one [agents.NAME] table",
            );
            // No [agents] at all: no line to point at.
            e.line = e.line.filter(|_| agents_table.is_some());
            return Err(e);
        };

        let mut agents: Vec<Arc<Agent>> = Vec::new();
        let mut numbers: HashMap<String, Arc<Agent>> = HashMap::new();
        let mut default: Option<Arc<Agent>> = None;
        for (key, value) in table {
            let name = key.get_ref().to_string();
            if !is_name(&name) {
                return Err(self.error(
                    Place::Agent(name),
                    None,
                    &key.span(),
                    "an agent's name is 1 to 64 letters, digits, '-' and '_'",
                ));
            }
            let scope = Scope {
                parser: self,
                place: Place::Agent(name.clone()),
            };
            let own = scope.settings(scope.table("", value)?, true)?;
            let s = merge(own, &defaults);
            let engine = s.engine.unwrap_or_default();
            if engine == Engine::Live {
                if s.backend_model.is_none() {
                    return Err(scope.err(
                        "backend_model",
                        &key.span(),
                        "engine = \"live\" delegates the agent's tools to a Responses model: set \
                         backend_model (e.g. \"gpt-5.5\")",
                    ));
                }
                if s.mcp.as_ref().is_some_and(|m| !m.is_empty()) {
                    return Err(scope.err(
                        "mcp",
                        &key.span(),
                        "engine = \"live\" cannot take MCP servers: GPT-Live's delegation types \
                         (the official SDK's) give an `mcp` tool no server, URL or headers",
                    ));
                }
            }
            let model = match (s.model, engine) {
                (Some(model), _) => model,
                (None, Engine::Live) => DEFAULT_LIVE_MODEL.to_string(),
                (None, Engine::Realtime) => default_model.to_string(),
            };
            let agent = Arc::new(Agent {
                name: name.clone(),
                numbers: s
                    .numbers
                    .iter()
                    .flatten()
                    .map(|n| n.get_ref().clone())
                    .collect(),
                is_default: s.default.as_ref().is_some_and(|d| *d.get_ref()),
                instructions: s
                    .instructions
                    .as_ref()
                    .map_or(DEFAULT_AGENT_INSTRUCTIONS.to_string(), |(t, _)| t.clone()),
                instructions_file: s.instructions.and_then(|(_, f)| f),
                greeting: s.greeting,
                voice: s.voice.unwrap_or_else(|| DEFAULT_AGENT_VOICE.to_string()),
                model,
                turn_detection: s.turn_detection.unwrap_or_default(),
                noise_reduction: s.noise_reduction,
                transfer_targets: s.transfer_targets.unwrap_or_default(),
                dtmf_to_model: s.dtmf.unwrap_or(true),
                tools: s.tools.unwrap_or_default(),
                mcp: s.mcp.unwrap_or_default(),
                engine,
                backend_model: s.backend_model,
            });
            for number in s.numbers.iter().flatten() {
                if let Some(other) = numbers.get(number.get_ref()) {
                    return Err(scope.err(
                        "numbers",
                        &number.span(),
                        format!(
                            "{} is already answered by agent `{}`: a number has one agent",
                            number.get_ref(),
                            other.name
                        ),
                    ));
                }
                numbers.insert(number.get_ref().clone(), agent.clone());
            }
            if let Some(flag) = s.default.filter(|d| *d.get_ref()) {
                if let Some(other) = &default {
                    return Err(scope.err(
                        "default",
                        &flag.span(),
                        format!(
                            "agent `{}` is already the default: at most one agent sets default = true",
                            other.name
                        ),
                    ));
                }
                default = Some(agent.clone());
            }
            agents.push(agent);
        }
        Ok(Agents {
            file: Some(self.file.to_path_buf()),
            agents,
            numbers,
            default,
        })
    }
}

/// An agent's own settings over `[defaults]`: each key set in the agent replaces the default's.
fn merge(own: Settings, defaults: &Settings) -> Settings {
    let d = defaults.clone();
    Settings {
        numbers: own.numbers,
        default: own.default,
        instructions: own.instructions.or(d.instructions),
        greeting: own.greeting.or(d.greeting),
        voice: own.voice.or(d.voice),
        model: own.model.or(d.model),
        turn_detection: own.turn_detection.or(d.turn_detection),
        noise_reduction: own.noise_reduction.or(d.noise_reduction),
        transfer_targets: own.transfer_targets.or(d.transfer_targets),
        dtmf: own.dtmf.or(d.dtmf),
        tools: own.tools.or(d.tools),
        mcp: own.mcp.or(d.mcp),
        engine: own.engine.or(d.engine),
        backend_model: own.backend_model.or(d.backend_model),
    }
}

fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(x) => format!("the float {x}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
        DeValue::Datetime(d) => format!("the date-time {d}"),
    }
}

/// `prefix.key`, or `key` at the top of a table.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'i> Scope<'_, '_> {
    fn err(&self, key: &str, span: &Range<usize>, problem: impl Into<String>) -> AgentsError {
        let key = (!key.is_empty()).then(|| key.to_string());
        self.parser.error(self.place.clone(), key, span, problem)
    }

    /// `expected {what}, found {the value}`.
    fn wrong(&self, key: &str, value: &Value<'i>, what: &str) -> AgentsError {
        let found = found(value.get_ref());
        self.err(
            key,
            &value.span(),
            format!("expected {what}, found {found}"),
        )
    }

    fn table<'v>(&self, key: &str, value: &'v Value<'i>) -> Result<&'v DeTable<'i>, AgentsError> {
        value
            .get_ref()
            .as_table()
            .ok_or_else(|| self.wrong(key, value, "a table"))
    }

    fn array<'v>(&self, key: &str, value: &'v Value<'i>) -> Result<&'v DeArray<'i>, AgentsError> {
        value
            .get_ref()
            .as_array()
            .ok_or_else(|| self.wrong(key, value, "an array"))
    }

    fn string<'v>(&self, key: &str, value: &'v Value<'i>) -> Result<&'v str, AgentsError> {
        value
            .get_ref()
            .as_str()
            .ok_or_else(|| self.wrong(key, value, "a string"))
    }

    /// A string with something in it.
    fn text(&self, key: &str, value: &Value<'i>) -> Result<String, AgentsError> {
        let s = self.string(key, value)?;
        if s.trim().is_empty() {
            return Err(self.err(key, &value.span(), "is empty"));
        }
        Ok(s.to_string())
    }

    fn boolean(&self, key: &str, value: &Value<'i>) -> Result<bool, AgentsError> {
        value
            .get_ref()
            .as_bool()
            .ok_or_else(|| self.wrong(key, value, "true or false"))
    }

    /// A whole number in `range`.
    fn integer(
        &self,
        key: &str,
        value: &Value<'i>,
        range: std::ops::RangeInclusive<u64>,
        unit: &str,
    ) -> Result<u64, AgentsError> {
        let n = value
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match n {
            Some(n) if u64::try_from(n).is_ok_and(|n| range.contains(&n)) => Ok(n as u64),
            Some(n) => Err(self.err(
                key,
                &value.span(),
                format!(
                    "{n} is out of range: expected {} to {}{unit}",
                    range.start(),
                    range.end()
                ),
            )),
            None => Err(self.wrong(
                key,
                value,
                &format!(
                    "a whole number from {} to {}{unit}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// One of `choices`.
    fn choice<T: Copy>(
        &self,
        key: &str,
        value: &Value<'i>,
        choices: &[(&str, T)],
    ) -> Result<T, AgentsError> {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let expected = names.join(" or ");
        match value.get_ref().as_str() {
            Some(s) => choices
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(_, t)| *t)
                .ok_or_else(|| self.err(key, &value.span(), format!("{s:?}: expected {expected}"))),
            None => Err(self.wrong(key, value, &expected)),
        }
    }

    fn unknown(&self, key: &str, span: &Range<usize>, keys: &str) -> AgentsError {
        self.err(key, span, format!("unknown key (expected one of: {keys})"))
    }

    /// The keys of one agent table or of `[defaults]` (`routing`: `numbers` and `default` are
    /// allowed, in an agent's own table only).
    fn settings(&self, table: &DeTable<'i>, routing: bool) -> Result<Settings, AgentsError> {
        let mut s = Settings::default();
        let mut instructions_key: Option<&str> = None;
        for (key, value) in table {
            let k = key.get_ref().as_ref();
            if (k == "instructions" || k == "instructions_file") && instructions_key.is_some() {
                return Err(self.err(
                    k,
                    &key.span(),
                    "set instructions or instructions_file, not both",
                ));
            }
            match k {
                "numbers" | "default" if !routing => {
                    return Err(self.err(
                        k,
                        &key.span(),
                        "only an agent's own table may set it ([defaults] is inherited by every \
                         agent, and a number or the default belongs to one)",
                    ))
                }
                "numbers" => {
                    let mut seen = HashSet::new();
                    let mut numbers = Vec::new();
                    for item in self.array(k, value)? {
                        let n = self.string(k, item)?;
                        if !is_e164(n) {
                            return Err(self.err(
                                k,
                                &item.span(),
                                format!("{n:?} is not an E.164 number such as +14155550123"),
                            ));
                        }
                        if !seen.insert(n.to_string()) {
                            return Err(self.err(k, &item.span(), format!("{n} is named twice")));
                        }
                        numbers.push(Spanned::new(item.span(), n.to_string()));
                    }
                    s.numbers = Some(numbers);
                }
                "default" => s.default = Some(Spanned::new(value.span(), self.boolean(k, value)?)),
                "instructions" => {
                    instructions_key = Some("instructions");
                    s.instructions = Some((self.text(k, value)?, None));
                }
                "instructions_file" => {
                    instructions_key = Some("instructions_file");
                    let relative = self.text(k, value)?;
                    let path = self.parser.dir.join(&relative);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        self.err(
                            k,
                            &value.span(),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    if text.trim().is_empty() {
                        return Err(self.err(
                            k,
                            &value.span(),
                            format!("{} is empty", path.display()),
                        ));
                    }
                    s.instructions = Some((text, Some(path)));
                }
                "greeting" => s.greeting = Some(self.text(k, value)?),
                "engine" => {
                    s.engine = Some(self.choice(
                        k,
                        value,
                        &[("realtime", Engine::Realtime), ("live", Engine::Live)],
                    )?)
                }
                "voice" | "model" | "backend_model" => {
                    let v = self.text(k, value)?;
                    if !is_identifier(&v) {
                        return Err(self.err(
                            k,
                            &value.span(),
                            format!("{v:?}: expected a name of letters, digits, '.', '-' and '_'"),
                        ));
                    }
                    match k {
                        "voice" => s.voice = Some(v),
                        "model" => s.model = Some(v),
                        _ => s.backend_model = Some(v),
                    }
                }
                "turn_detection" => s.turn_detection = Some(self.turn_detection(value)?),
                "noise_reduction" => {
                    s.noise_reduction = Some(self.choice(
                        k,
                        value,
                        &[
                            ("near_field", NoiseReduction::NearField),
                            ("far_field", NoiseReduction::FarField),
                        ],
                    )?)
                }
                "transfer_targets" => s.transfer_targets = Some(self.transfer_targets(value)?),
                "dtmf" => {
                    s.dtmf = Some(match value.get_ref() {
                        DeValue::Boolean(b) => *b,
                        _ => self.choice(k, value, &[("on", true), ("off", false)])?,
                    })
                }
                "tools" => s.tools = Some(self.tools(value)?),
                "mcp" => s.mcp = Some(self.mcp_servers(value)?),
                other => return Err(self.unknown(other, &key.span(), AGENT_KEYS)),
            }
        }
        Ok(s)
    }

    fn turn_detection(&self, value: &Value<'i>) -> Result<TurnDetection, AgentsError> {
        const KEY: &str = "turn_detection";
        let table = self.table(KEY, value)?;
        let kind = table
            .iter()
            .find(|(k, _)| k.get_ref() == "type")
            .map(|(_, v)| v)
            .ok_or_else(|| {
                self.err(
                    KEY,
                    &value.span(),
                    "missing type: expected type = \"server_vad\" or \"semantic_vad\"",
                )
            })?;
        let kind = self.choice(
            "turn_detection.type",
            kind,
            &[("server_vad", true), ("semantic_vad", false)],
        )?;
        let mut detection = if kind {
            TurnDetection::default()
        } else {
            TurnDetection::SemanticVad {
                eagerness: Eagerness::Auto,
            }
        };
        for (key, v) in table {
            let k = key.get_ref().as_ref();
            let path = join(KEY, k);
            match (&mut detection, k) {
                (_, "type") => {}
                (TurnDetection::ServerVad { threshold, .. }, "threshold") => {
                    let t = match v.get_ref() {
                        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                        DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
                        _ => None,
                    };
                    match t {
                        Some(t) if (0.0..=1.0).contains(&t) => *threshold = Some(t),
                        _ => return Err(self.wrong(&path, v, "a number from 0.0 to 1.0")),
                    }
                }
                (
                    TurnDetection::ServerVad {
                        prefix_padding_ms, ..
                    },
                    "prefix_padding_ms",
                ) => *prefix_padding_ms = Some(self.integer(&path, v, 0..=MAX_VAD_MS, " ms")?),
                (
                    TurnDetection::ServerVad {
                        silence_duration_ms,
                        ..
                    },
                    "silence_duration_ms",
                ) => *silence_duration_ms = Some(self.integer(&path, v, 0..=MAX_VAD_MS, " ms")?),
                (TurnDetection::SemanticVad { eagerness }, "eagerness") => {
                    *eagerness = self.choice(
                        &path,
                        v,
                        &[
                            ("low", Eagerness::Low),
                            ("medium", Eagerness::Medium),
                            ("high", Eagerness::High),
                            ("auto", Eagerness::Auto),
                        ],
                    )?
                }
                (TurnDetection::ServerVad { .. }, _) => {
                    return Err(self.unknown(
                        &path,
                        &key.span(),
                        "type, threshold, prefix_padding_ms, silence_duration_ms for server_vad",
                    ))
                }
                (TurnDetection::SemanticVad { .. }, _) => {
                    return Err(self.unknown(
                        &path,
                        &key.span(),
                        "type, eagerness for semantic_vad",
                    ))
                }
            }
        }
        Ok(detection)
    }

    fn transfer_targets(&self, value: &Value<'i>) -> Result<Vec<TransferTarget>, AgentsError> {
        let mut targets = Vec::new();
        for (key, v) in self.table("transfer_targets", value)? {
            let name = key.get_ref().to_string();
            let path = join("transfer_targets", &name);
            if !is_name(&name) {
                return Err(self.err(
                    &path,
                    &key.span(),
                    "a target's name is 1 to 64 letters, digits, '-' and '_' (the model passes it as target)",
                ));
            }
            let to = self.string(&path, v)?;
            let destination = if is_e164(to) {
                Destination::Number(to.to_string())
            } else if is_sip_uri(to) {
                Destination::Sip(to.to_string())
            } else if to.starts_with("sip:") {
                return Err(self.err(
                    &path,
                    &v.span(),
                    format!("{to:?} is not a SIP URI such as sip:billing@pbx.example.com"),
                ));
            } else {
                return Err(self.err(
                    &path,
                    &v.span(),
                    format!("{to:?} is neither an E.164 number such as +14155550123 nor a SIP URI such as sip:billing@pbx.example.com"),
                ));
            };
            targets.push(TransferTarget { name, destination });
        }
        Ok(targets)
    }

    /// An array of tables (`[[agents.NAME.tools]]`, or `tools = [{ ... }]`).
    fn tables<'v>(
        &self,
        key: &str,
        value: &'v Value<'i>,
    ) -> Result<Vec<(String, &'v Value<'i>, &'v DeTable<'i>)>, AgentsError> {
        let mut out = Vec::new();
        for (i, item) in self.array(key, value)?.iter().enumerate() {
            let path = format!("{key}[{i}]");
            let table = self.table(&path, item)?;
            out.push((path, item, table));
        }
        Ok(out)
    }

    fn tools(&self, value: &Value<'i>) -> Result<Vec<Tool>, AgentsError> {
        let mut tools: Vec<Tool> = Vec::new();
        for (path, item, table) in self.tables("tools", value)? {
            let (mut name, mut description, mut url, mut parameters) = (None, None, None, None);
            let mut timeout_ms = DEFAULT_TOOL_TIMEOUT_MS;
            for (key, v) in table {
                let k = key.get_ref().as_ref();
                let at = join(&path, k);
                match k {
                    "name" => {
                        let n = self.string(&at, v)?;
                        if !is_name(n) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!(
                                    "{n:?} is not a tool name: expected ^[a-zA-Z0-9_-]{{1,64}}$"
                                ),
                            ));
                        }
                        if BUILT_IN_TOOLS.contains(&n) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{n:?} is a built-in tool's name (end_call and transfer_call are callvisor's own)"),
                            ));
                        }
                        if tools.iter().any(|t| t.name == n) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{n:?} is the name of another tool of this agent"),
                            ));
                        }
                        name = Some(n.to_string());
                    }
                    "description" => description = Some(self.text(&at, v)?),
                    "url" => {
                        let u = self.string(&at, v)?;
                        if !is_http_url(u) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{u:?} is not an http:// or https:// URL"),
                            ));
                        }
                        url = Some(u.to_string());
                    }
                    "timeout_ms" => {
                        timeout_ms = self.integer(&at, v, 1..=MAX_TOOL_TIMEOUT_MS, " ms")?
                    }
                    "parameters" => parameters = Some(self.parameters(&at, v)?),
                    _ => return Err(self.unknown(&at, &key.span(), TOOL_KEYS)),
                }
            }
            let missing = |what: &str, why: &str| {
                self.err(
                    &join(&path, what),
                    &item.span(),
                    format!("missing: every tool needs {why}"),
                )
            };
            tools.push(Tool {
                name: name.ok_or_else(|| missing("name", "a name"))?,
                description: description
                    .ok_or_else(|| missing("description", "a description (the model reads it)"))?,
                url: url.ok_or_else(|| missing("url", "a url (callvisor POSTs the call to it)"))?,
                timeout: Duration::from_millis(timeout_ms),
                parameters: parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
        }
        Ok(tools)
    }

    /// A JSON Schema object: `type = "object"`, `properties` a table of schemas, `required` (if
    /// any) names of those properties. The rest of JSON Schema is the model's to read.
    fn parameters(&self, path: &str, value: &Value<'i>) -> Result<Json, AgentsError> {
        const WHAT: &str = "a JSON Schema object such as { type = \"object\", properties = { order_number = { type = \"string\" } } }";
        let Some(table) = value.get_ref().as_table() else {
            return Err(self.wrong(path, value, WHAT));
        };
        let get = |name: &str| table.iter().find(|(k, _)| k.get_ref() == name);
        match get("type") {
            Some((_, t)) if t.get_ref().as_str() == Some("object") => {}
            Some((_, t)) => {
                let what = format!("\"object\" ({WHAT})");
                return Err(self.wrong(&join(path, "type"), t, &what));
            }
            None => {
                return Err(self.err(
                    path,
                    &value.span(),
                    format!("missing type = \"object\": expected {WHAT}"),
                ))
            }
        }
        let Some((_, properties)) = get("properties") else {
            return Err(self.err(
                path,
                &value.span(),
                format!("missing properties: expected {WHAT} (properties = {{}} for none)"),
            ));
        };
        let properties_path = join(path, "properties");
        let Some(properties) = properties.get_ref().as_table() else {
            return Err(self.wrong(&properties_path, properties, "a table of JSON Schemas"));
        };
        for (name, schema) in properties {
            if !schema.get_ref().is_table() {
                let at = join(&properties_path, name.get_ref());
                let what = "a JSON Schema (a table such as { type = \"string\" })";
                return Err(self.wrong(&at, schema, what));
            }
        }
        if let Some((_, required)) = get("required") {
            let at = join(path, "required");
            for item in self.array(&at, required)? {
                let name = self.string(&at, item)?;
                if !properties.iter().any(|(k, _)| k.get_ref() == name) {
                    return Err(self.err(
                        &at,
                        &item.span(),
                        format!("{name:?} is not one of the properties"),
                    ));
                }
            }
        }
        self.json(path, value)
    }

    /// A TOML value as JSON (a date-time has no JSON form).
    fn json(&self, path: &str, value: &Value<'i>) -> Result<Json, AgentsError> {
        Ok(match value.get_ref() {
            DeValue::String(s) => Json::String(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => json!(n),
                Err(_) => return Err(self.err(path, &value.span(), "integer out of range")),
            },
            DeValue::Float(f) => match f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Json::Number(n),
                None => return Err(self.err(path, &value.span(), format!("{f} has no JSON form"))),
            },
            DeValue::Boolean(b) => Json::Bool(*b),
            DeValue::Datetime(d) => {
                return Err(self.err(
                    path,
                    &value.span(),
                    format!("the date-time {d} has no JSON form: quote it"),
                ))
            }
            DeValue::Array(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.json(&format!("{path}[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(table) => {
                let mut map = JsonMap::new();
                for (k, v) in table {
                    map.insert(
                        k.get_ref().to_string(),
                        self.json(&join(path, k.get_ref()), v)?,
                    );
                }
                Json::Object(map)
            }
        })
    }

    fn mcp_servers(&self, value: &Value<'i>) -> Result<Vec<McpServer>, AgentsError> {
        let mut servers: Vec<McpServer> = Vec::new();
        for (path, item, table) in self.tables("mcp", value)? {
            let (mut label, mut url, mut allowed_tools) = (None, None, None);
            let mut require_approval = RequireApproval::Never;
            let mut headers = Vec::new();
            for (key, v) in table {
                let k = key.get_ref().as_ref();
                let at = join(&path, k);
                match k {
                    "server_label" => {
                        let l = self.string(&at, v)?;
                        if !is_name(l) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{l:?}: expected 1 to 64 letters, digits, '-' and '_'"),
                            ));
                        }
                        if servers.iter().any(|s| s.server_label == l) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{l:?} is the label of another MCP server of this agent"),
                            ));
                        }
                        label = Some(l.to_string());
                    }
                    "server_url" => {
                        let u = self.string(&at, v)?;
                        if !is_http_url(u) {
                            return Err(self.err(
                                &at,
                                &v.span(),
                                format!("{u:?} is not an http:// or https:// URL"),
                            ));
                        }
                        url = Some(u.to_string());
                    }
                    "allowed_tools" => {
                        let mut names = Vec::new();
                        for tool in self.array(&at, v)? {
                            names.push(self.text(&at, tool)?);
                        }
                        allowed_tools = Some(names);
                    }
                    "require_approval" => {
                        require_approval = self.choice(
                            &at,
                            v,
                            &[
                                ("never", RequireApproval::Never),
                                ("always", RequireApproval::Always),
                            ],
                        )?
                    }
                    "headers_from_env" => {
                        for (header, var) in self.table(&at, v)? {
                            let name = header.get_ref().to_string();
                            let hat = join(&at, &name);
                            if !is_header_name(&name) {
                                return Err(self.err(
                                    &hat,
                                    &header.span(),
                                    "not an HTTP header name",
                                ));
                            }
                            let env = self.string(&hat, var)?;
                            if !is_env_name(env) {
                                return Err(self.err(
                                    &hat,
                                    &var.span(),
                                    format!("{env:?} is not an environment variable's name (the value is read from the environment, never written in the file)"),
                                ));
                            }
                            let value = (self.parser.env)(env)
                                .filter(|v| !v.trim().is_empty())
                                .ok_or_else(|| {
                                    self.err(
                                        &hat,
                                        &var.span(),
                                        format!("the environment variable {env} is not set"),
                                    )
                                })?;
                            if value.contains(['\r', '\n', '\0']) {
                                return Err(self.err(
                                    &hat,
                                    &var.span(),
                                    format!("the environment variable {env} holds a line break or NUL, which a header value cannot"),
                                ));
                            }
                            headers.push(McpHeader {
                                name,
                                env: env.to_string(),
                                value: SecretString::from(value.trim().to_string()),
                            });
                        }
                    }
                    _ => return Err(self.unknown(&at, &key.span(), MCP_KEYS)),
                }
            }
            let missing = |what: &str| {
                self.err(
                    &join(&path, what),
                    &item.span(),
                    format!("missing: every MCP server needs a {what}"),
                )
            };
            servers.push(McpServer {
                server_label: label.ok_or_else(|| missing("server_label"))?,
                server_url: url.ok_or_else(|| missing("server_url"))?,
                allowed_tools,
                require_approval,
                headers,
            });
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// What `OPENAI_MODEL` says in these tests: an agent that names no model gets it.
    const MODEL: &str = "gpt-realtime-test";

    /// A folder of the test's own holding `files` (path, text).
    fn folder(test: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "callvisor-agents-unit-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn parse(text: &str) -> Result<Agents, AgentsError> {
        Agents::parse(text, Path::new("/srv/agents.toml"), &|_| None, MODEL)
    }

    /// The error line of a file that must be refused.
    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(agents) => panic!("accepted: {agents:?}\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// The issue's example, whole.
    const EXAMPLE: &str = r#"
[defaults]                       # any agent key; every agent inherits it
model = "gpt-realtime-2.1"
voice = "marin"

[agents.support]
numbers = ["+15550001111"]
default = true
instructions_file = "prompts/support.md"
greeting = "Thanks for calling Acme. How can I help?"
voice = "cedar"
turn_detection = { type = "semantic_vad", eagerness = "low" }
noise_reduction = "near_field"
transfer_targets = { sales = "+15550002222", billing = "sip:billing@pbx.example.com" }

[[agents.support.tools]]
name = "lookup_order"
description = "Look up an order by its number."
url = "https://api.example.com/voice-tools/lookup_order"
timeout_ms = 5000
parameters = { type = "object", properties = { order_number = { type = "string" } }, required = ["order_number"] }

[[agents.support.mcp]]
server_label = "crm"
server_url = "https://mcp.example.com/mcp"
allowed_tools = ["find_customer"]
require_approval = "never"
headers_from_env = { Authorization = "CRM_MCP_AUTHORIZATION" }

[agents.sales]
numbers = ["+15550003333", "+15550004444"]
instructions = "You sell {{product}}."
turn_detection = { type = "server_vad", threshold = 0.6, prefix_padding_ms = 300, silence_duration_ms = 600 }
noise_reduction = "far_field"
dtmf = "off"
"#;

    #[test]
    fn the_issues_example_loads_with_every_setting_typed() {
        let dir = folder(
            "example",
            &[
                ("agents.toml", EXAMPLE),
                ("prompts/support.md", "You are Acme's support agent.\n"),
            ],
        );
        let env =
            |name: &str| (name == "CRM_MCP_AUTHORIZATION").then(|| "Bearer crm-s3cret".to_string());
        let agents = Agents::load(&dir.join("agents.toml"), &env, MODEL).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(agents.len(), 2);
        let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["support", "sales"], "the file's order");

        let support = agents.by_name("support").unwrap();
        assert_eq!(support.numbers, ["+15550001111"]);
        assert!(support.is_default);
        assert_eq!(support.instructions, "You are Acme's support agent.\n");
        assert_eq!(
            support.instructions_file.as_deref(),
            Some(dir.join("prompts/support.md").as_path())
        );
        assert_eq!(
            support.greeting.as_deref(),
            Some("Thanks for calling Acme. How can I help?")
        );
        assert_eq!(support.voice, "cedar", "its own voice over [defaults]");
        assert_eq!(
            support.model, "gpt-realtime-2.1",
            "[defaults] over OPENAI_MODEL"
        );
        assert_eq!(
            support.turn_detection,
            TurnDetection::SemanticVad {
                eagerness: Eagerness::Low
            }
        );
        assert_eq!(support.noise_reduction, Some(NoiseReduction::NearField));
        assert_eq!(
            support.transfer_targets,
            [
                TransferTarget {
                    name: "sales".into(),
                    destination: Destination::Number("+15550002222".into())
                },
                TransferTarget {
                    name: "billing".into(),
                    destination: Destination::Sip("sip:billing@pbx.example.com".into())
                },
            ]
        );
        assert_eq!(
            support.transfer_target("billing"),
            Some(&Destination::Sip("sip:billing@pbx.example.com".into()))
        );
        assert_eq!(support.transfer_target("nobody"), None);
        assert!(support.dtmf_to_model, "key presses on by default");
        assert_eq!(
            support.tools,
            [Tool {
                name: "lookup_order".into(),
                description: "Look up an order by its number.".into(),
                url: "https://api.example.com/voice-tools/lookup_order".into(),
                timeout: Duration::from_millis(5000),
                parameters: json!({"type": "object",
                    "properties": {"order_number": {"type": "string"}},
                    "required": ["order_number"]}),
            }]
        );
        assert_eq!(
            support.tool("lookup_order").map(|t| t.name.as_str()),
            Some("lookup_order")
        );
        let [crm] = &support.mcp[..] else {
            panic!("{:?}", support.mcp)
        };
        assert_eq!(crm.server_label, "crm");
        assert_eq!(crm.server_url, "https://mcp.example.com/mcp");
        assert_eq!(crm.allowed_tools, Some(vec!["find_customer".to_string()]));
        assert_eq!(crm.require_approval, RequireApproval::Never);
        let [auth] = &crm.headers[..] else {
            panic!("{:?}", crm.headers)
        };
        assert_eq!(
            (
                auth.name.as_str(),
                auth.env.as_str(),
                auth.value.expose_secret()
            ),
            (
                "Authorization",
                "CRM_MCP_AUTHORIZATION",
                "Bearer crm-s3cret"
            )
        );

        let sales = agents.by_name("sales").unwrap();
        assert_eq!(sales.numbers, ["+15550003333", "+15550004444"]);
        assert!(!sales.is_default);
        assert_eq!(sales.instructions, "You sell {{product}}.");
        assert_eq!(sales.instructions_file, None);
        assert_eq!(sales.greeting, None);
        assert_eq!(sales.voice, "marin", "inherited from [defaults]");
        assert_eq!(
            sales.turn_detection,
            TurnDetection::ServerVad {
                threshold: Some(0.6),
                prefix_padding_ms: Some(300),
                silence_duration_ms: Some(600)
            }
        );
        assert_eq!(sales.noise_reduction, Some(NoiseReduction::FarField));
        assert!(sales.transfer_targets.is_empty() && sales.tools.is_empty());
        assert!(sales.mcp.is_empty());
        assert!(!sales.dtmf_to_model);

        // Routing: exact number, else the default.
        let to = |n: &str| agents.for_number(n).map(|a| a.name.as_str());
        assert_eq!(to("+15550004444"), Some("sales"));
        assert_eq!(to("+15550001111"), Some("support"));
        assert_eq!(to("+15559999999"), Some("support"));
        assert_eq!(to("15550004444"), Some("support"), "exact match only");
        assert_eq!(
            agents.default_agent().map(|a| a.name.as_str()),
            Some("support")
        );
        assert!(agents.by_name("billing").is_none());
        let (agent, tool) = agents.first_tool().unwrap();
        assert_eq!(
            (agent.name.as_str(), tool.name.as_str()),
            ("support", "lookup_order")
        );

        // The secret header's value shows nowhere.
        let shown = format!("{agents:?} {agents:#?} {}", agents.routing_table());
        assert!(!shown.contains("crm-s3cret"), "{shown}");
    }

    #[test]
    fn what_no_table_sets_takes_todays_defaults() {
        let agents = parse("[agents.a]\nnumbers = [\"+15550001111\"]\n").unwrap();
        let a = agents.by_name("a").unwrap();
        assert_eq!(a.model, MODEL, "OPENAI_MODEL's value");
        assert_eq!(a.voice, DEFAULT_AGENT_VOICE);
        assert_eq!(a.instructions, DEFAULT_AGENT_INSTRUCTIONS);
        assert_eq!(a.turn_detection, TurnDetection::default());
        assert_eq!(a.turn_detection.to_json(), json!({"type": "server_vad"}));
        assert_eq!(a.noise_reduction, None);
        assert!(a.dtmf_to_model && a.greeting.is_none());
        assert!(a.tools.is_empty() && a.mcp.is_empty() && a.transfer_targets.is_empty());
        // No default agent: a number nobody names reaches nobody.
        assert!(agents.for_number("+15550002222").is_none());
        assert!(agents.first_tool().is_none());
        let table = agents.routing_table();
        assert!(
            table.contains(
                "any other number  -> none: the caller hears that the number is not in service"
            ),
            "{table}"
        );
    }

    #[test]
    fn an_agents_key_replaces_the_defaults_one_wholesale() {
        let agents = parse(
            r#"
[defaults]
greeting = "Hi."
instructions = "Default prompt."
dtmf = false
transfer_targets = { desk = "+15550009999" }
[[defaults.tools]]
name = "shared"
description = "A tool every agent has."
url = "https://tools.example.com/shared"

[agents.plain]
default = true

[agents.own]
numbers = ["+15550001111"]
instructions = "Own prompt."
dtmf = "on"
transfer_targets = {}
[[agents.own.tools]]
name = "mine"
description = "Only mine."
url = "http://127.0.0.1:9/mine?key=k"
timeout_ms = 30000
"#,
        )
        .unwrap();
        let plain = agents.by_name("plain").unwrap();
        assert_eq!(plain.greeting.as_deref(), Some("Hi."));
        assert_eq!(plain.instructions, "Default prompt.");
        assert!(!plain.dtmf_to_model);
        assert_eq!(
            plain.transfer_target("desk"),
            Some(&Destination::Number("+15550009999".into()))
        );
        assert_eq!(plain.tools.len(), 1);
        assert_eq!(plain.tools[0].name, "shared");
        assert_eq!(
            plain.tools[0].timeout,
            Duration::from_millis(DEFAULT_TOOL_TIMEOUT_MS)
        );
        assert_eq!(
            plain.tools[0].parameters,
            json!({"type": "object", "properties": {}}),
            "no parameters: a tool without arguments"
        );
        let own = agents.by_name("own").unwrap();
        assert_eq!(own.instructions, "Own prompt.");
        assert!(own.dtmf_to_model);
        assert!(
            own.transfer_targets.is_empty(),
            "an empty table drops the default's targets"
        );
        let names: Vec<&str> = own.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mine"], "its tools replace the default tools");
        assert_eq!(own.tools[0].timeout, Duration::from_secs(30));
        let table = agents.routing_table();
        assert!(
            table.contains("tool mine: POST http://127.0.0.1:9/mine?…, timeout 30000 ms"),
            "{table}"
        );
        assert!(
            !table.contains("key=k"),
            "a URL's query may hold a credential: {table}"
        );
    }

    #[test]
    fn the_routing_table_names_numbers_agents_tools_and_mcp_header_names() {
        let dir = folder(
            "table",
            &[("agents.toml", EXAMPLE), ("prompts/support.md", "Support.")],
        );
        let env = |_: &str| Some("Bearer crm-s3cret".to_string());
        let agents = Agents::load(&dir.join("agents.toml"), &env, MODEL).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let table = agents.routing_table();
        for line in [
            "  +15550001111      -> support\n",
            "  +15550003333      -> sales\n",
            "  +15550004444      -> sales\n",
            "  any other number  -> support (default)\n",
            "agent support (default)\n",
            "  model gpt-realtime-2.1, voice cedar, turn detection semantic_vad eagerness=low, noise reduction near_field, key presses on\n",
            "  greeting: \"Thanks for calling Acme. How can I help?\"\n",
            "  transfer targets: sales -> +15550002222, billing -> sip:billing@pbx.example.com\n",
            "  tool lookup_order: POST https://api.example.com/voice-tools/lookup_order, timeout 5000 ms\n",
            "  mcp crm: https://mcp.example.com/mcp, tools find_customer, approval never, headers Authorization\n",
            "agent sales\n",
            "  model gpt-realtime-2.1, voice marin, turn detection server_vad threshold=0.6 prefix_padding_ms=300 silence_duration_ms=600, noise reduction far_field, key presses off\n",
            "  instructions: 21 characters\n",
        ] {
            assert!(table.contains(line), "{line:?} missing from:\n{table}");
        }
        assert!(!table.contains("s3cret"), "{table}");
    }

    #[test]
    fn turn_detection_becomes_the_apis_object() {
        assert_eq!(
            TurnDetection::ServerVad {
                threshold: Some(0.5),
                prefix_padding_ms: Some(300),
                silence_duration_ms: None
            }
            .to_json(),
            json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300})
        );
        assert_eq!(
            TurnDetection::SemanticVad {
                eagerness: Eagerness::High
            }
            .to_json(),
            json!({"type": "semantic_vad", "eagerness": "high"})
        );
        let agents =
            parse("[agents.a]\ndefault = true\nturn_detection = { type = \"semantic_vad\" }\n")
                .unwrap();
        assert_eq!(
            agents.by_name("a").unwrap().turn_detection,
            TurnDetection::SemanticVad {
                eagerness: Eagerness::Auto
            }
        );
    }

    #[test]
    fn the_environment_variables_agent_answers_every_number() {
        let mut agent = Agent::basic("default", "m", "alloy", "Hi.");
        agent.numbers.push("+15550001111".into());
        let agents = Agents::single(agent);
        assert!(agents.file().is_none());
        for to in ["+15550001111", "+15559999999", ""] {
            assert_eq!(
                agents.for_number(to).map(|a| a.name.as_str()),
                Some("default")
            );
        }
        assert!(agents.by_name("default").unwrap().is_default);
    }

    #[test]
    fn urls_and_sip_uris() {
        for ok in [
            "https://api.example.com/x",
            "http://127.0.0.1:8080/tools?key=abc",
            "https://[::1]:9/x",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in [
            "api.example.com/x",
            "ftp://example.com",
            "https://",
            "https:///x",
            "https://exa mple.com",
            "ws://example.com",
            "",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
        for ok in [
            "sip:billing@pbx.example.com",
            "sip:1001@10.0.0.5:5060",
            "sip:alice@pbx.example.com;transport=tls",
            "sip:bob@[2001:db8::1]:5061",
            "sip:+15550002222@trunk.example.com?X-Team=sales",
        ] {
            assert!(is_sip_uri(ok), "{ok}");
        }
        for bad in [
            "sip:pbx.example.com",
            "sip:@pbx.example.com",
            "sip:a@",
            "sip:a@pbx.example.com:0",
            "sip:a@pbx.example.com:port",
            "sip:a b@pbx.example.com",
            "sip:a@<pbx>",
            "sips:a@pbx.example.com",
            "tel:+15550002222",
        ] {
            assert!(!is_sip_uri(bad), "{bad}");
        }
    }

    /// Every check: the one line names the file, the line, the agent, the key and what is wrong.
    #[test]
    fn a_live_agent_gets_its_engine_its_backend_and_gpt_live_1_by_default() {
        let agents = parse(
            "[defaults]\nbackend_model = \"gpt-5.5\"\n\
             [agents.live]\ndefault = true\nengine = \"live\"\n\
             [agents.live11]\nengine = \"live\"\nmodel = \"gpt-live-1.1\"\n\
             [agents.rt]\nnumbers = [\"+15550001111\"]\n",
        )
        .unwrap();
        let live = agents.by_name("live").unwrap();
        assert_eq!(live.engine, Engine::Live);
        assert_eq!(live.model, DEFAULT_LIVE_MODEL);
        assert_eq!(live.backend_model.as_deref(), Some("gpt-5.5"));
        assert_eq!(agents.by_name("live11").unwrap().model, "gpt-live-1.1");
        let rt = agents.by_name("rt").unwrap();
        assert_eq!((rt.engine, rt.model.as_str()), (Engine::Realtime, MODEL));
    }

    #[test]
    fn every_bad_file_is_refused_with_one_precise_line() {
        const A: &str = "[agents.a]\ndefault = true\n";
        let tool = |extra: &str| {
            format!("{A}[[agents.a.tools]]\nname = \"t\"\ndescription = \"d\"\nurl = \"https://x.example.com/t\"\n{extra}")
        };
        let cases: Vec<(String, &str)> = vec![
            // Unknown keys, anywhere.
            ("[agent.a]\n".into(), "/srv/agents.toml:1: key `agent`: unknown key (the file has [defaults] and [agents.NAME] tables)"),
            (format!("{A}voise = \"x\"\n"), "/srv/agents.toml:3: agent `a`, key `voise`: unknown key (expected one of: numbers, default, instructions, instructions_file, greeting, voice, model, turn_detection, noise_reduction, transfer_targets, dtmf, tools, mcp, engine, backend_model)"),
            (format!("[defaults]\ntone = \"calm\"\n{A}"), "/srv/agents.toml:2: [defaults], key `tone`: unknown key (expected one of: numbers, default, instructions, instructions_file, greeting, voice, model, turn_detection, noise_reduction, transfer_targets, dtmf, tools, mcp, engine, backend_model)"),
            (tool("timeout = 5\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].timeout`: unknown key (expected one of: name, description, url, timeout_ms, parameters)"),
            (format!("{A}[[agents.a.mcp]]\nlabel = \"crm\"\n"), "/srv/agents.toml:4: agent `a`, key `mcp[0].label`: unknown key (expected one of: server_label, server_url, allowed_tools, require_approval, headers_from_env)"),
            (format!("{A}turn_detection = {{ type = \"server_vad\", eagerness = \"low\" }}\n"), "/srv/agents.toml:3: agent `a`, key `turn_detection.eagerness`: unknown key (expected one of: type, threshold, prefix_padding_ms, silence_duration_ms for server_vad)"),
            // Numbers.
            (format!("{A}numbers = [\"555-0100\"]\n"), "/srv/agents.toml:3: agent `a`, key `numbers`: \"555-0100\" is not an E.164 number such as +14155550123"),
            (format!("{A}numbers = [\"+15550001111\", \"+15550001111\"]\n"), "/srv/agents.toml:3: agent `a`, key `numbers`: +15550001111 is named twice"),
            (format!("{A}numbers = [\"+15550001111\"]\n[agents.b]\nnumbers = [\"+15550002222\", \"+15550001111\"]\n"), "/srv/agents.toml:5: agent `b`, key `numbers`: +15550001111 is already answered by agent `a`: a number has one agent"),
            (format!("{A}[agents.b]\ndefault = true\n"), "/srv/agents.toml:4: agent `b`, key `default`: agent `a` is already the default: at most one agent sets default = true"),
            (format!("[defaults]\nnumbers = [\"+15550001111\"]\n{A}"), "/srv/agents.toml:2: [defaults], key `numbers`: only an agent's own table may set it ([defaults] is inherited by every agent, and a number or the default belongs to one)"),
            // Transfer targets.
            (format!("{A}transfer_targets = {{ sales = \"5550002222\" }}\n"), "/srv/agents.toml:3: agent `a`, key `transfer_targets.sales`: \"5550002222\" is neither an E.164 number such as +14155550123 nor a SIP URI such as sip:billing@pbx.example.com"),
            (format!("{A}transfer_targets = {{ billing = \"sip:pbx.example.com\" }}\n"), "/srv/agents.toml:3: agent `a`, key `transfer_targets.billing`: \"sip:pbx.example.com\" is not a SIP URI such as sip:billing@pbx.example.com"),
            (format!("{A}transfer_targets = {{ \"front desk\" = \"+15550002222\" }}\n"), "/srv/agents.toml:3: agent `a`, key `transfer_targets.front desk`: a target's name is 1 to 64 letters, digits, '-' and '_' (the model passes it as target)"),
            // Agent names.
            ("[agents.\"sales team\"]\ndefault = true\n".into(), "/srv/agents.toml:1: agent `sales team`: an agent's name is 1 to 64 letters, digits, '-' and '_'"),
            ("[agents]\n".into(), "/srv/agents.toml:1: no agent: add at least one [agents.NAME] table"),
            ("[defaults]\nvoice = \"marin\"\n".into(), "/srv/agents.toml: no agent: add at least one [agents.NAME] table"),
            // Tools.
            (format!("{A}[[agents.a.tools]]\nname = \"look up\"\n"), "/srv/agents.toml:4: agent `a`, key `tools[0].name`: \"look up\" is not a tool name: expected ^[a-zA-Z0-9_-]{1,64}$"),
            (format!("{A}[[agents.a.tools]]\nname = \"{}\"\n", "x".repeat(65)), "is not a tool name: expected ^[a-zA-Z0-9_-]{1,64}$"),
            (format!("{A}[[agents.a.tools]]\nname = \"end_call\"\n"), "/srv/agents.toml:4: agent `a`, key `tools[0].name`: \"end_call\" is a built-in tool's name (end_call and transfer_call are callvisor's own)"),
            (format!("{A}[[agents.a.tools]]\nname = \"transfer_call\"\n"), "/srv/agents.toml:4: agent `a`, key `tools[0].name`: \"transfer_call\" is a built-in tool's name (end_call and transfer_call are callvisor's own)"),
            (tool("[[agents.a.tools]]\nname = \"t\"\n"), "/srv/agents.toml:8: agent `a`, key `tools[1].name`: \"t\" is the name of another tool of this agent"),
            (tool("timeout_ms = 0\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].timeout_ms`: 0 is out of range: expected 1 to 30000 ms"),
            (tool("timeout_ms = 30001\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].timeout_ms`: 30001 is out of range: expected 1 to 30000 ms"),
            (tool("timeout_ms = \"5s\"\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].timeout_ms`: expected a whole number from 1 to 30000 ms, found the string \"5s\""),
            (format!("{A}[[agents.a.tools]]\nname = \"t\"\nurl = \"api.example.com/t\"\n"), "/srv/agents.toml:5: agent `a`, key `tools[0].url`: \"api.example.com/t\" is not an http:// or https:// URL"),
            (format!("{A}[[agents.a.tools]]\nname = \"t\"\ndescription = \"d\"\n"), "/srv/agents.toml:3: agent `a`, key `tools[0].url`: missing: every tool needs a url (callvisor POSTs the call to it)"),
            (tool("parameters = \"order_number\"\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters`: expected a JSON Schema object such as { type = \"object\", properties = { order_number = { type = \"string\" } } }, found the string \"order_number\""),
            (tool("parameters = { type = \"string\" }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters.type`: expected \"object\" (a JSON Schema object such as { type = \"object\", properties = { order_number = { type = \"string\" } } }), found the string \"string\""),
            (tool("parameters = { properties = {} }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters`: missing type = \"object\": expected a JSON Schema object"),
            (tool("parameters = { type = \"object\" }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters`: missing properties: expected a JSON Schema object"),
            (tool("parameters = { type = \"object\", properties = [\"n\"] }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters.properties`: expected a table of JSON Schemas, found an array"),
            (tool("parameters = { type = \"object\", properties = { n = \"string\" } }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters.properties.n`: expected a JSON Schema (a table such as { type = \"string\" }), found the string \"string\""),
            (tool("parameters = { type = \"object\", properties = { n = {} }, required = [\"m\"] }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters.required`: \"m\" is not one of the properties"),
            (tool("parameters = { type = \"object\", properties = { d = { default = 1979-05-27 } } }\n"), "/srv/agents.toml:7: agent `a`, key `tools[0].parameters.properties.d.default`: the date-time 1979-05-27 has no JSON form: quote it"),
            // Instructions.
            (format!("{A}instructions_file = \"prompts/missing.md\"\n"), "/srv/agents.toml:3: agent `a`, key `instructions_file`: cannot read /srv/prompts/missing.md: No such file or directory (os error 2)"),
            (format!("{A}instructions = \"x\"\ninstructions_file = \"p.md\"\n"), "/srv/agents.toml:4: agent `a`, key `instructions_file`: set instructions or instructions_file, not both"),
            (format!("{A}instructions = \"  \"\n"), "/srv/agents.toml:3: agent `a`, key `instructions`: is empty"),
            // MCP.
            (format!("{A}[[agents.a.mcp]]\nserver_label = \"crm\"\nserver_url = \"https://mcp.example.com/mcp\"\nheaders_from_env = {{ Authorization = \"CRM_TOKEN\" }}\n"), "/srv/agents.toml:6: agent `a`, key `mcp[0].headers_from_env.Authorization`: the environment variable CRM_TOKEN is not set"),
            (format!("{A}[[agents.a.mcp]]\nserver_label = \"crm\"\nheaders_from_env = {{ Authorization = \"Bearer abc\" }}\n"), "/srv/agents.toml:5: agent `a`, key `mcp[0].headers_from_env.Authorization`: \"Bearer abc\" is not an environment variable's name (the value is read from the environment, never written in the file)"),
            (format!("{A}[[agents.a.mcp]]\nserver_label = \"crm\"\nserver_url = \"mcp.example.com\"\n"), "/srv/agents.toml:5: agent `a`, key `mcp[0].server_url`: \"mcp.example.com\" is not an http:// or https:// URL"),
            (format!("{A}[[agents.a.mcp]]\nserver_label = \"crm\"\nserver_url = \"https://m.example.com\"\nrequire_approval = \"sometimes\"\n"), "/srv/agents.toml:6: agent `a`, key `mcp[0].require_approval`: \"sometimes\": expected \"never\" or \"always\""),
            (format!("{A}[[agents.a.mcp]]\nserver_url = \"https://m.example.com\"\n"), "/srv/agents.toml:3: agent `a`, key `mcp[0].server_label`: missing: every MCP server needs a server_label"),
            // Values.
            (format!("{A}dtmf = \"sometimes\"\n"), "/srv/agents.toml:3: agent `a`, key `dtmf`: \"sometimes\": expected \"on\" or \"off\""),
            (format!("{A}noise_reduction = \"none\"\n"), "/srv/agents.toml:3: agent `a`, key `noise_reduction`: \"none\": expected \"near_field\" or \"far_field\""),
            // GPT-Live agents.
            (format!("{A}engine = \"gpt\"\n"), "/srv/agents.toml:3: agent `a`, key `engine`: \"gpt\": expected \"realtime\" or \"live\""),
            (format!("{A}engine = \"live\"\n"), "/srv/agents.toml:1: agent `a`, key `backend_model`: engine = \"live\" delegates the agent's tools to a Responses model: set backend_model (e.g. \"gpt-5.5\")"),
            (format!("{A}engine = \"live\"\nbackend_model = \"gpt-5.5\"\n[[agents.a.mcp]]\nserver_label = \"crm\"\nserver_url = \"https://mcp.example.com\"\n"), "/srv/agents.toml:1: agent `a`, key `mcp`: engine = \"live\" cannot take MCP servers: GPT-Live's delegation types (the official SDK's) give an `mcp` tool no server, URL or headers"),
            (format!("{A}turn_detection = {{ type = \"vad\" }}\n"), "/srv/agents.toml:3: agent `a`, key `turn_detection.type`: \"vad\": expected \"server_vad\" or \"semantic_vad\""),
            (format!("{A}turn_detection = {{ type = \"server_vad\", threshold = 1.5 }}\n"), "/srv/agents.toml:3: agent `a`, key `turn_detection.threshold`: expected a number from 0.0 to 1.0, found the float 1.5"),
            (format!("{A}turn_detection = {{ type = \"semantic_vad\", eagerness = \"eager\" }}\n"), "/srv/agents.toml:3: agent `a`, key `turn_detection.eagerness`: \"eager\": expected \"low\" or \"medium\" or \"high\" or \"auto\""),
            (format!("{A}voice = 7\n"), "/srv/agents.toml:3: agent `a`, key `voice`: expected a string, found the integer 7"),
            (format!("{A}model = \"gpt realtime\"\n"), "/srv/agents.toml:3: agent `a`, key `model`: \"gpt realtime\": expected a name of letters, digits, '.', '-' and '_'"),
            // Not TOML.
            (format!("{A}voice = \"marin\n"), "/srv/agents.toml:3: not valid TOML: invalid basic string, expected `\"`"),
            (format!("{A}voice = \"a\"\nvoice = \"b\"\n"), "/srv/agents.toml:4: not valid TOML: duplicate key (at `voice`)"),
            (format!("{A}[agents.a]\n"), "/srv/agents.toml:3: not valid TOML: duplicate key (at `a`)"),
        ];
        let mut wrong = Vec::new();
        for (text, expected) in &cases {
            let line = refused(text);
            let fits = if expected.starts_with('/') {
                line.starts_with(expected)
            } else {
                line.contains(expected)
            };
            if !fits || line.lines().count() != 1 {
                wrong.push(format!("{text}\n  got: {line}\n want: {expected}\n"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_header_value_with_a_line_break_is_refused_without_showing_it() {
        let text = "[agents.a]\ndefault = true\n[[agents.a.mcp]]\nserver_label = \"crm\"\nserver_url = \"https://m.example.com\"\nheaders_from_env = { X-Key = \"CRM_KEY\" }\n";
        let env = |_: &str| Some("s3cret\r\nX-Evil: 1".to_string());
        let e = Agents::parse(text, Path::new("a.toml"), &env, MODEL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.toml:6: agent `a`, key `mcp[0].headers_from_env.X-Key`: the environment variable CRM_KEY holds a line break or NUL, which a header value cannot"
        );
    }

    #[test]
    fn an_unreadable_file_names_it() {
        let e = Agents::load(Path::new("/nonexistent/agents.toml"), &|_| None, MODEL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/agents.toml: cannot be read: No such file or directory (os error 2)"
        );
        assert_eq!(
            e.detail(),
            "cannot be read: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_detail_is_the_line_without_the_file() {
        let e = parse("[agents.a]\nvoice = \"\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.place, Place::Agent("a".into()));
        assert_eq!(e.key.as_deref(), Some("voice"));
        assert_eq!(e.detail(), "line 2: agent `a`, key `voice`: is empty");
    }
}
