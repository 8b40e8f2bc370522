//! What the SIGKILL tests share: this test binary run again as a child that prints
//! what it has done line by line, killed at a chosen line; numbered events; rounds.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_protocol::{EventBody, Value};
use tern_sdk::Properties;

/// How long a restarted SDK may take to apply or shut down.
pub const WAIT: Duration = Duration::from_secs(30);

/// Properties `{"n": n}`.
pub fn numbered(n: i64) -> Properties {
    [("n".to_string(), Value::Int(n))].into_iter().collect()
}

/// The `n` of a custom event recorded with [`numbered`].
pub fn number(body: &EventBody) -> Option<i64> {
    match body {
        EventBody::Custom { props, .. } => match props.get("n") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

/// Starts `exe` (this test binary) with `env`, passes each line it prints to `seen`
/// until `seen` returns true (or the child ends), SIGKILLs it, then passes the lines
/// that had landed before the kill (`seen`'s answer no longer matters).
pub fn kill_when(exe: &Path, env: &[(&str, &str)], mut seen: impl FnMut(&str) -> bool) {
    let mut command = Command::new(exe);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if seen(&line.expect("read")) {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    for line in lines.map_while(Result::ok) {
        seen(&line);
    }
}

/// The test's entry point. With `child_var` set (to the data directory) this process
/// is a child: runs `child` and returns `None`. Otherwise runs `rounds` rounds
/// (`rounds_var` overrides) of `round(this binary, round number)` and returns the
/// number of rounds and the sum of what they counted.
pub fn run(
    child_var: &str,
    rounds_var: &str,
    rounds: usize,
    child: impl FnOnce(&Path),
    mut round: impl FnMut(&Path, usize) -> usize,
) -> Option<(usize, usize)> {
    if let Ok(dir) = std::env::var(child_var) {
        child(Path::new(&dir));
        return None;
    }
    let rounds = std::env::var(rounds_var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rounds);
    let exe = std::env::current_exe().expect("current_exe");
    let counted = (0..rounds).map(|r| round(&exe, r)).sum();
    Some((rounds, counted))
}
