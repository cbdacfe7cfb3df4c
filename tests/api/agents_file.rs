//! `AGENTS_FILE` through the real binary: `callvisor agents check FILE` prints the routing table
//! of a good file (exit 0) and refuses each kind of bad file with its one precise line (exit 2);
//! the server loads the same file at start, and refuses the same problems.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::helpers::{run_binary, spawn_binary};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CRM_TOKEN: &str = "Bearer crm-t0ken-9f8e";

/// The issue's example, whole, plus a second agent.
const GOOD: &str = r#"[defaults]
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
url = "https://api.example.com/voice-tools/lookup_order?key=k3y"
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
instructions = "You sell."
dtmf = "off"
"#;

/// A folder of the test's own with `agents.toml` = `text` and the prompt the good file names.
fn folder(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "callvisor-agents-file-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    std::fs::write(
        dir.join("prompts/support.md"),
        "You are Acme's support agent.",
    )
    .unwrap();
    std::fs::write(dir.join("agents.toml"), text).unwrap();
    dir
}

/// `callvisor agents check agents.toml` in `dir`, with the variables a good file needs.
fn check(dir: &Path, extra: &[(&str, &str)]) -> Output {
    let mut env = vec![
        ("WEBHOOK_SECRET", SECRET),
        ("CRM_MCP_AUTHORIZATION", CRM_TOKEN),
    ];
    env.extend_from_slice(extra);
    run_binary(&["agents", "check", "agents.toml"], &env, dir)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_good_file_prints_its_routing_table_and_exits_0() {
    let dir = folder("good", GOOD);
    let out = check(&dir, &[]);
    // FILE defaults to $AGENTS_FILE.
    let from_env = run_binary(
        &["agents", "check"],
        &[
            ("AGENTS_FILE", "agents.toml"),
            ("WEBHOOK_SECRET", SECRET),
            ("CRM_MCP_AUTHORIZATION", CRM_TOKEN),
        ],
        &dir,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        stdout,
        "agents.toml: 2 agents

routing (the webhook's To):
  +15550001111      -> support
  +15550003333      -> sales
  +15550004444      -> sales
  any other number  -> support (default)

agent support (default)
  model gpt-realtime-2.1, voice cedar, turn detection semantic_vad eagerness=low, noise reduction near_field, key presses on
  instructions: 29 characters from prompts/support.md
  greeting: \"Thanks for calling Acme. How can I help?\"
  transfer targets: sales -> +15550002222, billing -> sip:billing@pbx.example.com
  tool lookup_order: POST https://api.example.com/voice-tools/lookup_order?…, timeout 5000 ms
  mcp crm: https://mcp.example.com/mcp, tools find_customer, approval never, headers Authorization

agent sales
  model gpt-realtime-2.1, voice marin, turn detection server_vad, noise reduction none, key presses off
  instructions: 9 characters

WEBHOOK_SECRET: set; tool requests are signed
"
    );
    assert!(!stdout.contains("crm-t0ken") && !stdout.contains("k3y"));
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "{}",
        text(&from_env.stderr)
    );
    assert_eq!(text(&from_env.stdout), stdout);
}

/// A good agent to append bad parts to.
const A: &str = "[agents.a]\ndefault = true\ninstructions = \"Hi.\"\n";

fn with_tool(extra: &str) -> String {
    format!(
        "{A}[[agents.a.tools]]\nname = \"lookup_order\"\ndescription = \"d\"\n\
         url = \"https://api.example.com/t\"\n{extra}"
    )
}

fn with_mcp(extra: &str) -> String {
    format!("{A}[[agents.a.mcp]]\nserver_label = \"crm\"\n{extra}")
}

#[test]
fn each_kind_of_bad_file_exits_2_with_its_one_precise_line() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown-top-key", "[agent.a]\ndefault = true\n".into(),
         "agents.toml:1: key `agent`: unknown key (the file has [defaults] and [agents.NAME] tables)"),
        ("unknown-agent-key", format!("{A}voise = \"marin\"\n"),
         "agents.toml:4: agent `a`, key `voise`: unknown key (expected one of: numbers, default, instructions, instructions_file, greeting, voice, model, turn_detection, noise_reduction, transfer_targets, dtmf, tools, mcp, engine, backend_model)"),
        ("unknown-tool-key", with_tool("timeout = 5\n"),
         "agents.toml:8: agent `a`, key `tools[0].timeout`: unknown key (expected one of: name, description, url, timeout_ms, parameters)"),
        ("bad-e164", format!("{A}numbers = [\"555-0100\"]\n"),
         "agents.toml:4: agent `a`, key `numbers`: \"555-0100\" is not an E.164 number such as +14155550123"),
        ("bad-target-number", format!("{A}transfer_targets = {{ sales = \"5550002222\" }}\n"),
         "agents.toml:4: agent `a`, key `transfer_targets.sales`: \"5550002222\" is neither an E.164 number such as +14155550123 nor a SIP URI such as sip:billing@pbx.example.com"),
        ("bad-sip-uri", format!("{A}transfer_targets = {{ billing = \"sip:pbx.example.com\" }}\n"),
         "agents.toml:4: agent `a`, key `transfer_targets.billing`: \"sip:pbx.example.com\" is not a SIP URI such as sip:billing@pbx.example.com"),
        ("number-twice", format!("{A}numbers = [\"+15550001111\"]\n[agents.b]\nnumbers = [\"+15550001111\"]\n"),
         "agents.toml:6: agent `b`, key `numbers`: +15550001111 is already answered by agent `a`: a number has one agent"),
        ("two-defaults", format!("{A}[agents.b]\ndefault = true\n"),
         "agents.toml:5: agent `b`, key `default`: agent `a` is already the default: at most one agent sets default = true"),
        ("bad-agent-name", "[agents.\"sales team\"]\ndefault = true\n".into(),
         "agents.toml:1: agent `sales team`: an agent's name is 1 to 64 letters, digits, '-' and '_'"),
        ("bad-tool-name", format!("{A}[[agents.a.tools]]\nname = \"look up\"\n"),
         "agents.toml:5: agent `a`, key `tools[0].name`: \"look up\" is not a tool name: expected ^[a-zA-Z0-9_-]{1,64}$"),
        ("tool-end-call", format!("{A}[[agents.a.tools]]\nname = \"end_call\"\n"),
         "agents.toml:5: agent `a`, key `tools[0].name`: \"end_call\" is a built-in tool's name (end_call and transfer_call are callvisor's own)"),
        ("tool-transfer-call", format!("{A}[[agents.a.tools]]\nname = \"transfer_call\"\n"),
         "agents.toml:5: agent `a`, key `tools[0].name`: \"transfer_call\" is a built-in tool's name (end_call and transfer_call are callvisor's own)"),
        ("tool-twice", with_tool("[[agents.a.tools]]\nname = \"lookup_order\"\n"),
         "agents.toml:9: agent `a`, key `tools[1].name`: \"lookup_order\" is the name of another tool of this agent"),
        ("parameters-not-object", with_tool("parameters = { type = \"string\" }\n"),
         "agents.toml:8: agent `a`, key `tools[0].parameters.type`: expected \"object\" (a JSON Schema object such as { type = \"object\", properties = { order_number = { type = \"string\" } } }), found the string \"string\""),
        ("parameters-properties", with_tool("parameters = { type = \"object\", properties = [\"order_number\"] }\n"),
         "agents.toml:8: agent `a`, key `tools[0].parameters.properties`: expected a table of JSON Schemas, found an array"),
        ("missing-instructions-file", "[agents.a]\ndefault = true\ninstructions_file = \"prompts/missing.md\"\n".into(),
         "agents.toml:3: agent `a`, key `instructions_file`: cannot read prompts/missing.md: No such file or directory (os error 2)"),
        ("unset-header-env", with_mcp("server_url = \"https://mcp.example.com/mcp\"\nheaders_from_env = { Authorization = \"CRM_TOKEN_UNSET\" }\n"),
         "agents.toml:7: agent `a`, key `mcp[0].headers_from_env.Authorization`: the environment variable CRM_TOKEN_UNSET is not set"),
        ("timeout-too-long", with_tool("timeout_ms = 30001\n"),
         "agents.toml:8: agent `a`, key `tools[0].timeout_ms`: 30001 is out of range: expected 1 to 30000 ms"),
        ("timeout-zero", with_tool("timeout_ms = 0\n"),
         "agents.toml:8: agent `a`, key `tools[0].timeout_ms`: 0 is out of range: expected 1 to 30000 ms"),
        ("bad-tool-url", format!("{A}[[agents.a.tools]]\nname = \"t\"\nurl = \"api.example.com/t\"\n"),
         "agents.toml:6: agent `a`, key `tools[0].url`: \"api.example.com/t\" is not an http:// or https:// URL"),
        ("bad-server-url", with_mcp("server_url = \"mcp.example.com/mcp\"\n"),
         "agents.toml:6: agent `a`, key `mcp[0].server_url`: \"mcp.example.com/mcp\" is not an http:// or https:// URL"),
        ("not-toml", format!("{A}voice = \"a\"\nvoice = \"b\"\n"),
         "agents.toml:5: not valid TOML: duplicate key (at `voice`)"),
    ];
    let mut wrong = Vec::new();
    for (name, file, expected) in &cases {
        let dir = folder(name, file);
        let out = check(&dir, &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        let stderr = text(&out.stderr);
        if out.status.code() != Some(2)
            || stderr != format!("{expected}\n")
            || !out.stdout.is_empty()
        {
            wrong.push(format!(
                "{name}: exit {:?}\n  got: {stderr}  want: {expected}\n",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_environment_is_checked_as_at_start() {
    let dir = folder("environment", GOOD);
    let no_secret = run_binary(
        &["agents", "check", "agents.toml"],
        &[("CRM_MCP_AUTHORIZATION", CRM_TOKEN)],
        &dir,
    );
    let bad_secret = check(&dir, &[("WEBHOOK_SECRET", "not-a-whsec-s3cret")]);
    let beside = check(&dir, &[("AGENT_VOICE", "marin"), ("AGENT_DTMF", "off")]);
    let no_file = run_binary(&["agents", "check"], &[], &dir);
    let usage = run_binary(&["agents", "lint"], &[], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    for (out, line) in [
        (&no_secret, "missing WEBHOOK_SECRET: agent `support`'s tool `lookup_order` (and any other tool) POSTs to the business signed with it (Standard Webhooks): set whsec_ and the base64 of at least 24 random bytes (docs/security.md)"),
        (&bad_secret, "invalid WEBHOOK_SECRET=\"(hidden)\": expected whsec_ and the base64 of at least 24 random bytes: webhook secret does not start with `whsec_` (expected whsec_<base64 of at least 24 random bytes>)"),
        (&beside, "invalid AGENTS_FILE=\"agents.toml\": expected no per-agent variable beside it (the file is the one source of truth), but AGENT_VOICE, AGENT_DTMF are set: move them into the file (AGENT_VOICE -> voice, AGENT_DTMF -> dtmf) and unset them"),
        (&no_file, "callvisor agents check: no FILE given and AGENTS_FILE is not set"),
        (&usage, "callvisor agents: usage: callvisor agents check [FILE] (FILE defaults to $AGENTS_FILE)"),
    ] {
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert_eq!(text(&out.stderr), format!("{line}\n"));
    }
    assert!(!text(&bad_secret.stderr).contains("s3cret"));
}

/// The server runs the same load: a bad file stops it (exit 2, one line), a good one is in its
/// startup line.
#[actix_web::test]
async fn the_server_loads_the_same_file_at_start() {
    let dir = folder("server", GOOD);
    let file = dir.join("agents.toml");
    let path = file.to_str().unwrap();
    let openai = [
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", "sk-test"),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("CRM_MCP_AUTHORIZATION", CRM_TOKEN),
        ("PORT", "0"),
        ("HOST", "127.0.0.1"),
    ];
    let mut without_secret = openai.to_vec();
    without_secret.push(("AGENTS_FILE", path));
    let refused = run_binary(&[], &without_secret, &dir);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        text(&refused.stderr),
        "callvisor: missing WEBHOOK_SECRET: agent `support`'s tool `lookup_order` (and any other tool) POSTs to the business signed with it (Standard Webhooks): set whsec_ and the base64 of at least 24 random bytes (docs/security.md)\n"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("{A}[agents.b]\ndefault = true\n")).unwrap();
    let mut bad_env = openai.to_vec();
    bad_env.push(("AGENTS_FILE", bad.to_str().unwrap()));
    let refused = run_binary(&[], &bad_env, &dir);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        text(&refused.stderr),
        format!(
            "callvisor: invalid AGENTS_FILE={:?}: expected an agents file without errors, but line 5: agent `b`, key `default`: agent `a` is already the default: at most one agent sets default = true\n",
            bad.to_str().unwrap()
        )
    );

    let mut env = openai.to_vec();
    env.extend([("AGENTS_FILE", path), ("WEBHOOK_SECRET", SECRET)]);
    let bin = spawn_binary(&env).await;
    let line = bin.wait_for_log("starting:").await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        line.contains(&format!(
            "handler=openai(wss://api.openai.com agents_file={path} agents=support,sales)"
        )),
        "{line}"
    );
    let log = bin.log_lines().join("\n");
    assert!(
        !log.contains("crm-t0ken") && !log.contains("MfKQ9r8G"),
        "{log}"
    );
}
