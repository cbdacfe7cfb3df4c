//! The agent's tools, whichever engine runs it: the function tools it declares (`end_call`,
//! `transfer_call` with the agent's targets, the agents file's own tools), what a function call
//! the model makes does, the agent's own tools' requests to the business (signed, at most
//! [`MAX_TOOLS_IN_FLIGHT`] at once, their answers back as the tool's output), and each call in
//! the call's record.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::{json, Value};

use super::agents::{Agent, Destination};
use super::metrics::AgentMetrics;
use super::settings::AgentConfig;
use crate::call::handler::{Call, HttpAnswer, HttpPost};
use crate::records::{ToolCallRecord, ToolOutcome};
use crate::twilio::signature::unix_now;

/// Tool requests one call runs at once.
pub const MAX_TOOLS_IN_FLIGHT: usize = 4;

/// The function tools an agent declares, in order: `end_call` (always), `transfer_call` (with a
/// `target` enum of the agent's transfer targets, when it has some), then the file's tools.
pub fn function_tools(agent: &Agent) -> Vec<Value> {
    let mut tools = vec![json!({
        "type": "function",
        "name": "end_call",
        "description": "End the phone call, after saying goodbye.",
        "parameters": {"type": "object", "properties": {}},
    })];
    if !agent.transfer_targets.is_empty() {
        let names: Vec<&str> = agent
            .transfer_targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        tools.push(json!({
            "type": "function",
            "name": "transfer_call",
            "description": "Transfer the caller to a person or department.",
            "parameters": {"type": "object",
                "properties": {"target": {"type": "string", "enum": names,
                    "description": "Where to transfer the caller."}},
                "required": ["target"]},
        }));
    }
    for tool in &agent.tools {
        tools.push(json!({"type": "function", "name": tool.name,
            "description": tool.description, "parameters": tool.parameters}));
    }
    tools
}

/// What a function call of the model comes to.
#[derive(Debug, PartialEq)]
pub enum ToolAction {
    /// `end_call`: hang up once the goodbye has played.
    EndCall,
    /// `transfer_call` to a known target: dial it (the number or the SIP URI).
    Transfer(String),
    /// The tool's output for the model now (an error it can tell the caller about).
    Output(String),
    /// A request to the business runs; its output comes with [`Tools::answered`].
    Pending,
}

/// A tool request of this call, waiting or running.
struct PendingTool {
    id: u64,
    call_id: String,
    name: String,
    /// When it was sent (`None`: waiting for a free slot).
    started: Option<Instant>,
    /// For the record: when the model called it (ms from the stream's start), with what.
    start_ms: u64,
    arguments: Value,
}

/// The agent's own tools in flight for one call.
#[derive(Default)]
pub struct Tools {
    next_id: u64,
    pending: Vec<PendingTool>,
    waiting: VecDeque<HttpPost>,
}

impl Tools {
    /// No request to the business is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// What the function call `item` does (a `function_call` item: `name`, `call_id`,
    /// `arguments` as the model wrote them; both engines' items have that shape). Logged,
    /// counted (by name: the built-ins and the agent's own; any other is `other`) and, unless a
    /// request runs, recorded.
    pub fn dispatch(
        &mut self,
        config: &AgentConfig,
        agent: &Agent,
        metrics: &AgentMetrics,
        item: &Value,
        call: &mut Call<'_>,
    ) -> ToolAction {
        let name = item["name"].as_str().unwrap_or("");
        let call_id = item["call_id"].as_str().unwrap_or("");
        let arguments = item["arguments"].as_str().unwrap_or("");
        log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid(); "agent: tool call {name}");
        let tool = agent.tool(name);
        let label = match (name, tool) {
            ("end_call" | "transfer_call", _) | (_, Some(_)) => name.to_string(),
            _ => "other".to_string(),
        };
        metrics
            .agent_tool_calls
            .get_or_create(&[("name", label)])
            .inc();
        let start_ms = call.elapsed_ms();
        let record = |call: &mut Call<'_>, outcome| {
            record_tool(call, name, call_id, arguments, start_ms, outcome, None);
        };
        let error = |why: &str| ToolAction::Output(json!({"error": why}).to_string());
        match (name, tool) {
            ("end_call", _) => {
                record(call, ToolOutcome::Ok);
                ToolAction::EndCall
            }
            ("transfer_call", _) => match transfer_destination(agent, arguments) {
                Ok(Destination::Number(to) | Destination::Sip(to)) => {
                    record(call, ToolOutcome::Ok);
                    ToolAction::Transfer(to)
                }
                Err(why) => {
                    log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid(); "agent: transfer_call refused: {why}");
                    record(call, ToolOutcome::Error);
                    error(&why)
                }
            },
            (_, Some(tool)) => {
                let Ok(parsed) = serde_json::from_str::<Value>(arguments) else {
                    record(call, ToolOutcome::Error);
                    return error("the arguments are not JSON");
                };
                let body = json!({"call_sid": call.call_sid(), "agent": agent.name,
                    "tool": tool.name, "call_id": call_id, "arguments": parsed})
                .to_string();
                let Some(secret) = &config.webhook_secret else {
                    // The configuration refuses tools without WEBHOOK_SECRET: not reached.
                    record(call, ToolOutcome::Error);
                    return error("the tool is not configured");
                };
                let headers = match signed_json_headers(secret, call_id, &body) {
                    Ok(headers) => headers,
                    Err(e) => {
                        record(call, ToolOutcome::Error);
                        return error(&format!("bad call_id: {e}"));
                    }
                };
                self.next_id += 1;
                let post = HttpPost {
                    // 1, 2, …: `on_http`'s 0 is the per-call configuration's.
                    id: self.next_id,
                    url: tool.url.clone(),
                    headers,
                    body,
                    timeout: tool.timeout,
                };
                self.pending.push(PendingTool {
                    id: post.id,
                    call_id: call_id.to_string(),
                    name: tool.name.clone(),
                    started: None,
                    start_ms,
                    arguments: parsed,
                });
                self.waiting.push_back(post);
                self.start_waiting(call);
                ToolAction::Pending
            }
            _ => {
                record(call, ToolOutcome::Error);
                error(&format!("unknown tool {name:?}"))
            }
        }
    }

    /// Starts waiting requests while fewer than [`MAX_TOOLS_IN_FLIGHT`] run.
    fn start_waiting(&mut self, call: &mut Call<'_>) {
        while self.pending.iter().filter(|t| t.started.is_some()).count() < MAX_TOOLS_IN_FLIGHT {
            let Some(post) = self.waiting.pop_front() else {
                break;
            };
            if let Some(pending) = self.pending.iter_mut().find(|t| t.id == post.id) {
                pending.started = Some(Instant::now());
            }
            call.http_post(post);
        }
    }

    /// The business answered request `id` (or did not): the tool's `call_id` and its output for
    /// the model (a 2xx body as it is; anything else an `{"error": …}` without a secret), or
    /// `None` when `id` is not a tool request.
    pub fn answered(
        &mut self,
        id: u64,
        answer: HttpAnswer,
        metrics: &AgentMetrics,
        call: &mut Call<'_>,
    ) -> Option<(String, String)> {
        let at = self.pending.iter().position(|t| t.id == id)?;
        let tool = self.pending.remove(at);
        let took = tool.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let status = match &answer {
            HttpAnswer::Answered { status, .. } => Some(*status),
            _ => None,
        };
        let (outcome, output) = match answer {
            HttpAnswer::Answered { status, body } if (200..300).contains(&status) => {
                (ToolOutcome::Ok, String::from_utf8_lossy(&body).into_owned())
            }
            HttpAnswer::Answered { status, .. } => (
                ToolOutcome::Error,
                json!({"error": format!("the tool answered HTTP {status}")}).to_string(),
            ),
            HttpAnswer::TimedOut => (
                ToolOutcome::Timeout,
                json!({"error": "the tool did not answer in time"}).to_string(),
            ),
            HttpAnswer::Failed(why) => (
                ToolOutcome::Error,
                json!({"error": format!("the tool could not be reached: {why}")}).to_string(),
            ),
        };
        let label = match outcome {
            ToolOutcome::Ok => "ok",
            ToolOutcome::Error => "error",
            ToolOutcome::Timeout => "timeout",
        };
        log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: tool {} ({}) {label} in {} ms", tool.name, tool.call_id, (took * 1000.0) as u64);
        metrics
            .agent_tool_requests
            .get_or_create(&[("name", tool.name.clone()), ("outcome", label.to_string())])
            .inc();
        metrics.agent_tool_seconds.observe(took);
        let now = call.elapsed_ms();
        if let Some(record) = call.record() {
            record.tool_call(ToolCallRecord {
                name: tool.name.clone(),
                call_id: tool.call_id.clone(),
                arguments: tool.arguments,
                start_ms: tool.start_ms,
                duration_ms: now.saturating_sub(tool.start_ms),
                outcome,
                status,
            });
        }
        self.start_waiting(call);
        Some((tool.call_id, output))
    }
}

/// `transfer_call`'s destination from its arguments: the target the model named (with one
/// target, the model may leave it out); anything else is an error for the model.
pub fn transfer_destination(agent: &Agent, arguments: &str) -> Result<Destination, String> {
    let arguments: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
    match (
        arguments["target"].as_str(),
        agent.transfer_targets.as_slice(),
    ) {
        (_, []) => Err("no transfer target is configured".to_string()),
        (Some(name), _) => agent
            .transfer_target(name)
            .cloned()
            .ok_or_else(|| format!("unknown transfer target {name:?}")),
        (None, [only]) => Ok(only.destination.clone()),
        (None, _) => Err("transfer_call needs a target".to_string()),
    }
}

/// A tool call into the call's record (`arguments` as the model wrote them: parsed when JSON).
fn record_tool(
    call: &mut Call<'_>,
    name: &str,
    call_id: &str,
    arguments: &str,
    start_ms: u64,
    outcome: ToolOutcome,
    status: Option<u16>,
) {
    let now = call.elapsed_ms();
    if let Some(record) = call.record() {
        let arguments = serde_json::from_str::<Value>(arguments)
            .unwrap_or_else(|_| Value::String(arguments.to_string()));
        record.tool_call(ToolCallRecord {
            name: name.to_string(),
            call_id: call_id.to_string(),
            arguments,
            start_ms,
            duration_ms: now.saturating_sub(start_ms),
            outcome,
            status,
        });
    }
}

/// The headers of a JSON request to the business: Standard Webhooks' three (`webhook-id` = `id`)
/// and the content type.
pub fn signed_json_headers(
    secret: &crate::webhooks::WebhookSecret,
    id: &str,
    body: &str,
) -> Result<Vec<(String, String)>, crate::webhooks::IdError> {
    let signed = secret.headers(id, body, unix_now())?;
    let mut headers: Vec<(String, String)> = signed
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    headers.push(("content-type".into(), "application/json".into()));
    Ok(headers)
}
