//! Push tokens under SIGKILL: a kill right after `set_push_token`, `push_opened`,
//! `opt_out(true)`, a foreground that refreshes the token or `delete_local_data`
//! returns loses none of them.
//!
//! Each round starts a child (this binary with `TERN_PUSH_CHILD` set) on a fresh
//! directory that identifies `alice`, then sets a new token `tok-<n>` and records
//! `push_opened("c-<n>")`, printing `A <n>` after both returned. On rounds where
//! `round % 3 == 2` (and not `round % 4 == 3`) it opts out after a few and prints `O <n>` (the last token) when
//! `opt_out(true)` has returned. The parent SIGKILLs it after a few acknowledged pairs
//! (or at `O`), restarts the SDK on the directory and checks:
//!
//! * every acknowledged token was recorded as a `push_token` event under `alice`, and
//!   every acknowledged `push_opened` is stored, in call order with the tokens;
//! * the store keeps the newest token set (no older one) — or none after the opt-out;
//! * after the opt-out, the device is opted out and exactly one batch leaves: the
//!   cleared newest token, alone.
//!
//! Rounds 3, 11, ... exercise the refresh instead: the child sets a token dated 8 days
//! ago, comes to the foreground (which journals a refresh) and prints `F <ms>`; killed
//! there, the restart holds the token recorded twice, the second time at `<ms>`. Rounds
//! 7, 15, ... delete the local data after setting a token and print `D`; killed there,
//! the restart has a new device id, no token, and the cleared token as its first event.
//!
//! `TERN_PUSH_ROUNDS` overrides the number of rounds (default 12).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tern_protocol::{EventBody, PushEnvironment, PushProvider, UserId};
use tern_sdk::{Call, Tern, TernConfig};

#[path = "support/kill.rs"]
mod kill;
use kill::WAIT;

fn config(dir: &Path) -> TernConfig {
    TernConfig::builder("crash", "key", dir)
        .build()
        .expect("config")
}

const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Rounds 3, 7, 11, ...: a refresh (`F`) or a deletion (`D`), then idle until killed.
fn child_other(tern: &Tern, mode: &str) {
    let mut out = std::io::stdout().lock();
    let at = now_ms();
    tern.apply(
        Call::SetPushToken {
            provider: PushProvider::Fcm,
            environment: None,
            token: "tok-old".into(),
        },
        at - 8 * DAY_MS,
    )
    .expect("set_push_token");
    if mode == "refresh" {
        tern.apply(Call::Foreground, at).expect("foreground");
        writeln!(out, "F {at}").expect("stdout");
    } else {
        tern.delete_local_data().expect("delete_local_data");
        writeln!(out, "D 0").expect("stdout");
    }
    out.flush().expect("flush");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn child(dir: &Path, opt_out_after: Option<u64>) {
    let tern = Tern::start(config(dir)).expect("start");
    tern.identify(Some("alice")).expect("identify");
    // Durability starts once the journal is open (see `Tern`'s docs).
    assert!(tern.wait_applied(WAIT));
    if let Ok(mode) = std::env::var("TERN_PUSH_MODE") {
        return child_other(&tern, &mode);
    }
    let mut out = std::io::stdout().lock();
    for n in 1u64.. {
        tern.set_push_token(
            PushProvider::Apns,
            Some(PushEnvironment::Sandbox),
            &format!("tok-{n}"),
        )
        .expect("set_push_token");
        tern.push_opened(&format!("c-{n}"), None)
            .expect("push_opened");
        writeln!(out, "A {n}").expect("stdout");
        out.flush().expect("flush");
        if opt_out_after == Some(n) {
            tern.opt_out(true).expect("opt_out");
            writeln!(out, "O {n}").expect("stdout");
            out.flush().expect("flush");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Rounds 3, 7, 11, ...: the refresh or the deletion survived the kill.
fn round_other(exe: &Path, round: usize, mode: &str) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut at = None;
    let path = dir.path().to_str().expect("utf-8 path");
    let env = [("TERN_PUSH_CHILD", path), ("TERN_PUSH_MODE", mode)];
    kill::kill_when(exe, &env, |line| {
        if let Some(("F" | "D", n)) = line.split_once(' ') {
            at.get_or_insert(n.parse::<i64>().expect("ms"));
        }
        at.is_some()
    });
    let at = at.expect("the child never got there");
    let tern = Tern::start(config(dir.path())).expect("restart");
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).expect("form");
    let mut tokens = Vec::new();
    while let Some(b) = tern.next_batch().expect("next") {
        for e in &b.batch.events {
            if let EventBody::PushToken { token, cleared, .. } = &e.body {
                tokens.push((token.clone(), *cleared, e.ts_ms, e.seq));
            }
        }
        tern.ack(b.batch.batch_id).expect("ack");
    }
    if mode == "refresh" {
        let got: Vec<_> = tokens.iter().map(|t| (t.0.as_str(), t.1)).collect();
        assert_eq!(
            got,
            [("tok-old", false), ("tok-old", false)],
            "round {round}"
        );
        assert_eq!(tokens[1].2, at, "round {round}: the refresh was lost");
        assert_eq!(tern.push_token().map(|p| p.sent_ms), Some(at));
    } else {
        assert!(tern.push_token().is_none(), "round {round}: token kept");
        assert_eq!(tokens.len(), 1, "round {round}: {tokens:?}");
        assert_eq!(
            (tokens[0].0.as_str(), tokens[0].1, tokens[0].3),
            ("tok-old", true, 1),
            "round {round}: the clearing is not the new identity's first event"
        );
    }
    assert!(tern.shutdown(WAIT).clean);
    1
}

fn round(exe: &Path, round: usize) -> usize {
    if round % 4 == 3 {
        let mode = if (round / 4).is_multiple_of(2) {
            "refresh"
        } else {
            "delete"
        };
        return round_other(exe, round, mode);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let opt_out = (round % 3 == 2).then_some(round as u64);
    let mut acked = BTreeSet::new();
    let mut opted_out = None;
    let wait_for = 1 + round % 4;
    let path = dir.path().to_str().expect("utf-8 path");
    let opt_out_env = opt_out.map(|n| n.to_string());
    let mut env = vec![("TERN_PUSH_CHILD", path)];
    if let Some(n) = &opt_out_env {
        env.push(("TERN_PUSH_OPT_OUT", n.as_str()));
    }
    kill::kill_when(exe, &env, |line| {
        match line.split_once(' ') {
            Some(("A", n)) => {
                acked.insert(n.parse::<u64>().expect("n"));
            }
            Some(("O", n)) => opted_out = Some(n.parse::<u64>().expect("n")),
            _ => {}
        }
        match opt_out {
            Some(_) => opted_out.is_some(),
            None => acked.len() >= wait_for,
        }
    });
    let newest_acked = *acked.last().expect("nothing acknowledged");

    let tern = Tern::start(config(dir.path())).expect("restart");
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).expect("form");
    if let Some(last) = opted_out {
        assert!(tern.is_opted_out(), "round {round}: the opt-out was lost");
        assert!(tern.push_token().is_none(), "round {round}: token kept");
        let b = tern.next_batch().expect("next").expect("the cleared token");
        let bodies: Vec<_> = b.batch.events.iter().map(|e| &e.body).collect();
        assert_eq!(
            bodies,
            [&EventBody::PushToken {
                provider: PushProvider::Apns,
                environment: Some(PushEnvironment::Sandbox),
                token: format!("tok-{last}"),
                cleared: true,
            }],
            "round {round}"
        );
        tern.ack(b.batch.batch_id).expect("ack");
        assert!(tern.next_batch().expect("next").is_none(), "round {round}");
        // Opted back in, the events kept from before leave.
        tern.opt_out(false).expect("opt in");
        assert!(tern.wait_applied(WAIT));
        tern.form_batches(true).expect("form");
    } else {
        let kept = tern
            .push_token()
            .unwrap_or_else(|| panic!("round {round}: no token, acked {acked:?}"));
        let n: u64 = kept.token["tok-".len()..].parse().expect("n");
        assert!(
            n >= newest_acked,
            "round {round}: kept tok-{n}, newer acked"
        );
        assert_eq!(kept.sent_user, Some(UserId::new("alice")));
    }
    // Tokens and opens, in call order: tok-1, c-1, tok-2, c-2, ...
    let mut seen = Vec::new();
    while let Some(b) = tern.next_batch().expect("next") {
        for e in &b.batch.events {
            match &e.body {
                EventBody::PushToken { token, cleared, .. } => {
                    assert!(!cleared, "round {round}");
                    assert_eq!(e.user_id, Some(UserId::new("alice")), "round {round}");
                    seen.push(token.clone());
                }
                EventBody::PushOpened { campaign_id, .. } => seen.push(campaign_id.clone()),
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        tern.ack(b.batch.batch_id).expect("ack");
    }
    let want: Vec<String> = (1..=newest_acked)
        .flat_map(|n| [format!("tok-{n}"), format!("c-{n}")])
        .collect();
    assert!(
        seen.len() >= want.len() && seen[..want.len()] == want[..],
        "round {round}: {seen:?} does not start with {want:?}"
    );
    assert!(tern.shutdown(WAIT).clean);
    acked.len()
}

fn main() {
    let child = |dir: &Path| {
        let opt_out = std::env::var("TERN_PUSH_OPT_OUT")
            .ok()
            .and_then(|v| v.parse().ok());
        child(dir, opt_out);
    };
    let Some((rounds, acked)) = kill::run("TERN_PUSH_CHILD", "TERN_PUSH_ROUNDS", 12, child, round)
    else {
        return;
    };
    println!("push crash test: {rounds} rounds, {acked} token and open pairs acknowledged, none lost or reordered");
    println!("1 passed, 0 failed");
}
