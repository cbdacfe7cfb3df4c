//! A bad variable stops the real binary at start: exit 2, one line naming it.

use std::process::Command;

fn run_with(var: &str, value: &str) -> std::process::Output {
    let dir = std::env::temp_dir(); // no stray .env can interfere
    Command::new(env!("CARGO_BIN_EXE_callvisor"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env(var, value)
        .output()
        .expect("binary runs")
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
