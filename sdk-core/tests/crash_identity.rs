//! `reset` and `alias` under SIGKILL: a kill right after `reset()` returns loses no
//! identity change, and no event recorded after the reset carries the old identity.
//!
//! Each round starts a child (this binary with `TERN_IDENTITY_CHILD` set) on a fresh
//! directory that records anonymous events, calls `alias("alice")`, records, prints
//! `R <old anonymous id>` when `reset()` has returned, then records numbered events
//! printing `A <n>` after each. The parent SIGKILLs it as soon as it reads `R` (or
//! after a few acknowledged events, on odd rounds), restarts the SDK on the directory
//! and checks:
//!
//! * the restarted store's anonymous id is not the old one;
//! * every event acknowledged after the reset is stored, anonymous, in a batch whose
//!   `anonymous_id` is the new one;
//! * the `alias` event names the old anonymous id and `alice`, and is under `alice`;
//! * nothing recorded before the reset is under the new anonymous id.
//!
//! `TERN_IDENTITY_ROUNDS` overrides the number of rounds (default 12).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tern_protocol::{AnonymousId, EventBody, UserId};
use tern_sdk::{Tern, TernConfig};

#[path = "support/kill.rs"]
mod kill;
use kill::{number, numbered, WAIT};

fn config(dir: &Path) -> TernConfig {
    TernConfig::builder("crash", "key", dir)
        .build()
        .expect("config")
}

fn child(dir: &Path) {
    let tern = Tern::start(config(dir)).expect("start");
    for n in 0..5 {
        tern.track("anonymous", numbered(n)).expect("track");
    }
    tern.alias("alice").expect("alias");
    for n in 5..10 {
        tern.track("identified", numbered(n)).expect("track");
    }
    // The anonymous id the alias linked: applied once everything before is.
    assert!(tern.wait_applied(WAIT));
    let old = tern.anonymous_id().expect("open store");
    tern.reset().expect("reset");
    let mut out = std::io::stdout().lock();
    writeln!(out, "R {old}").expect("stdout");
    out.flush().expect("flush");
    for n in 1000.. {
        tern.track("after reset", numbered(n)).expect("track");
        writeln!(out, "A {n}").expect("stdout");
        out.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn round(exe: &Path, round: usize) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = None;
    let mut acked = HashSet::new();
    // Odd rounds let a few events follow the reset before the kill.
    let wait_for = if round.is_multiple_of(2) { 0 } else { round };
    let path = dir.path().to_str().expect("utf-8 path");
    kill::kill_when(exe, &[("TERN_IDENTITY_CHILD", path)], |line| {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next()) {
            (Some("R"), Some(id)) => old = Some(AnonymousId::parse(id).expect("id")),
            (Some("A"), Some(n)) => {
                acked.insert(n.parse::<i64>().expect("n"));
            }
            _ => {}
        }
        old.is_some() && acked.len() >= wait_for
    });
    let old = old.expect("the child never reset");

    let tern = Tern::start(config(dir.path())).expect("restart");
    assert!(tern.wait_applied(WAIT));
    let new = tern.anonymous_id().expect("open store");
    assert_ne!(new, old, "round {round}: the reset was lost");
    tern.form_batches(true).expect("form");
    let mut after = HashSet::new();
    let mut alias_seen = false;
    while let Some(b) = tern.next_batch().expect("next") {
        for e in &b.batch.events {
            let n = match &e.body {
                EventBody::Custom { .. } => number(&e.body).expect("numbered"),
                EventBody::Alias {
                    anonymous_id,
                    user_id,
                } => {
                    assert_eq!((*anonymous_id, user_id.as_str()), (old, "alice"));
                    assert_eq!(e.user_id, Some(UserId::new("alice")));
                    alias_seen = true;
                    continue;
                }
                _ => continue,
            };
            if n >= 1000 {
                assert_eq!(e.user_id, None, "round {round}: event {n} kept the user");
                assert_eq!(b.batch.anonymous_id, Some(new), "round {round}: event {n}");
                after.insert(n);
            } else {
                assert_ne!(b.batch.anonymous_id, Some(new), "round {round}: event {n}");
                assert_eq!(e.user_id.is_some(), n >= 5, "round {round}: event {n}");
            }
        }
        tern.ack(b.batch.batch_id).expect("ack");
    }
    assert!(alias_seen, "round {round}: the alias was lost");
    let lost: Vec<_> = acked.difference(&after).collect();
    assert!(lost.is_empty(), "round {round}: lost {lost:?}");
    assert!(tern.shutdown(WAIT).clean);
    acked.len()
}

fn main() {
    let Some((rounds, acked)) = kill::run(
        "TERN_IDENTITY_CHILD",
        "TERN_IDENTITY_ROUNDS",
        12,
        child,
        round,
    ) else {
        return;
    };
    println!("identity crash test: {rounds} rounds, {acked} events acknowledged after a reset, none lost or misattributed");
    println!("1 passed, 0 failed");
}
