//! A bad variable stops the real binary at start: exit 2, one line naming it.

use std::process::Command;

fn run_with(var: &str, value: &str) -> std::process::Output {
    run_with_all(&[(var, value)])
}

fn run_with_all(vars: &[(&str, &str)]) -> std::process::Output {
    let dir = std::env::temp_dir(); // no stray .env can interfere
    Command::new(env!("CARGO_BIN_EXE_callvisor"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .envs(vars.iter().copied())
        .output()
        .expect("binary runs")
}

#[test]
fn a_call_app_that_cannot_run_exits_2_saying_what_is_missing() {
    // `expected echo, bridge or openai`: the registry's names (src/call/handlers/mod.rs).
    let bad_handler = format!(
        "invalid HANDLER=\"agent\": expected {}",
        callvisor::call::handlers::names()
    );
    for (vars, needle) in [
        (vec![("HANDLER", "agent")], bad_handler.as_str()),
        (
            vec![("HANDLER", "bridge"), ("TWILIO_AUTH_TOKEN", "t")],
            "missing BRIDGE_URL",
        ),
        (
            vec![("HANDLER", "bridge"), ("BRIDGE_URL", "https://bot"), ("TWILIO_AUTH_TOKEN", "t")],
            "invalid BRIDGE_URL=\"https://bot\"",
        ),
        (
            vec![("HANDLER", "bridge"), ("BRIDGE_URL", "wss://bot")],
            "missing TWILIO_API_KEY_SID: a call app (HANDLER other than echo) hangs calls up through Twilio's REST API: set TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET, or TWILIO_AUTH_TOKEN",
        ),
    ] {
        let out = run_with_all(&vars);
        assert_eq!(out.status.code(), Some(2), "{vars:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
        assert!(stderr.contains(needle), "{vars:?}: {stderr}");
    }
}

#[test]
fn invalid_values_exit_2_naming_the_variable() {
    for (var, value) in [
        ("LIMIT_CONCURRENCY", "abc"),
        ("LIMIT_CONCURRENCY", "0"),
        ("PORT", "99999"),
        ("MAX_REDIRECTS", "many"),
        ("START_TIMEOUT_SECS", "0"),
        ("PUBLIC_URL", "not-a-url"),
    ] {
        let out = run_with(var, value);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
        assert!(
            lines[0].contains(var) && lines[0].contains(value),
            "{stderr}"
        );
    }
}
