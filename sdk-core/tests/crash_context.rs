//! Context changes and lifecycle events under SIGKILL: an install is recorded exactly
//! once, an update exactly once per version change and naming the previous version,
//! an open per launch that reached the journal, and every event acknowledged after a
//! context change returned is sent with that context — whatever instant the app dies.
//!
//! Each round uses one directory and launches a child (this binary with
//! `TERN_CONTEXT_CHILD` set) three times with app versions `1.0`, then `1.0` or `2.0`,
//! then `2.0`. A child starts the SDK, prints `S` once the journal is open (its launch
//! record is then durable), sets the network to cellular and prints `C`, records five
//! numbered events printing `A <n>` after each, sets the network to Wi-Fi and prints
//! `W`, then records numbered events until it is SIGKILLed — right after `S` on some
//! launches, after a few events on others. The parent then starts the SDK itself on the
//! directory (a fourth launch, `2.0`) and checks, over every stored event in order:
//!
//! * one `app_installed`, the first lifecycle event;
//! * an `app_updated` exactly where the version changed between launches that were
//!   recorded, with the previous version and build, and nowhere else;
//! * an `app_opened` for every launch that printed `S`, none twice;
//! * every acknowledged event is stored, in a batch whose context has the version of
//!   its launch and the network set before it (cellular for the first five, Wi-Fi after).
//!
//! `TERN_CONTEXT_ROUNDS` overrides the number of rounds (default 8).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tern_protocol::{AppContext, EventBody, NetworkType};
use tern_sdk::{Tern, TernConfig};

#[path = "support/kill.rs"]
mod kill;
use kill::{number, numbered, WAIT};
/// Events numbered `launch * STRIDE + i`.
const STRIDE: i64 = 100_000;

fn config(dir: &Path, version: &str) -> TernConfig {
    TernConfig::builder("crash", "key", dir)
        .context(AppContext {
            app_version: Some(version.into()),
            app_build: Some(format!("build-{version}")),
            os_name: Some("linux".into()),
            screen_width: Some(1080),
            ..AppContext::default()
        })
        .auto_lifecycle(true)
        .build()
        .expect("config")
}

fn child(dir: &Path, version: &str, launch: i64) {
    let tern = Tern::start(config(dir, version)).expect("start");
    while !tern.stats().journal_ready {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "{line}").expect("stdout");
        out.flush().expect("flush");
    };
    say("S".into());
    tern.set_network_type(Some(NetworkType::Cellular))
        .expect("network");
    say("C".into());
    for i in 0.. {
        if i == 5 {
            tern.set_network_type(Some(NetworkType::Wifi))
                .expect("network");
            say("W".into());
        }
        let n = launch * STRIDE + i;
        tern.track("numbered", numbered(n)).expect("track");
        say(format!("A {n}"));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs one launch; returns whether it printed `S` and the events acknowledged.
fn launch(
    exe: &Path,
    dir: &Path,
    version: &str,
    launch: i64,
    kill_after: usize,
) -> (bool, HashSet<i64>) {
    let mut started = false;
    let mut acked = HashSet::new();
    let (dir, launch) = (dir.to_str().expect("utf-8 path"), launch.to_string());
    let env = [
        ("TERN_CONTEXT_CHILD", dir),
        ("TERN_CONTEXT_VERSION", version),
        ("TERN_CONTEXT_LAUNCH", launch.as_str()),
    ];
    kill::kill_when(exe, &env, |line| {
        if line == "S" {
            started = true;
        } else if let Some(n) = line.strip_prefix("A ") {
            acked.insert(n.parse::<i64>().expect("n"));
        }
        started && acked.len() >= kill_after
    });
    (started, acked)
}

fn version_of(ctx: &Option<AppContext>) -> Option<String> {
    ctx.as_ref().and_then(|c| c.app_version.clone())
}

fn round(exe: &Path, round: usize) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let versions = [
        "1.0",
        if round.is_multiple_of(2) {
            "1.0"
        } else {
            "2.0"
        },
        "2.0",
    ];
    let mut started = Vec::new();
    let mut acked = HashSet::new();
    for (k, v) in versions.iter().enumerate() {
        // Some launches die right after their launch record, others a few events in.
        let kill_after = (round * 3 + k * 4) % 9;
        let (s, a) = launch(exe, dir.path(), v, k as i64, kill_after);
        started.push(s);
        acked.extend(a);
    }

    let tern = Tern::start(config(dir.path(), "2.0")).expect("restart");
    assert!(tern.wait_applied(WAIT));
    tern.form_batches(true).expect("form");
    // (batch context, body) of every stored event, in sequence order.
    let mut stored = Vec::new();
    while let Some(b) = tern.next_batch().expect("next") {
        for e in &b.batch.events {
            stored.push((b.batch.context.clone(), e.body.clone()));
        }
        tern.ack(b.batch.batch_id).expect("ack");
    }
    let install = tern.install_id().expect("open store");

    // Lifecycle: replay the events against what the launches did.
    let mut last: Option<String> = None;
    let mut installs = 0;
    let mut opens = 0;
    let mut pending_update: Option<(Option<String>, Option<String>)> = None;
    let mut seen_numbers = HashSet::new();
    for (ctx, body) in &stored {
        let c = ctx.as_ref().expect("every event here has a context");
        assert_eq!(c.install_id, Some(install), "round {round}: install id");
        assert_eq!(c.screen_width, Some(1080));
        let v = version_of(ctx);
        match body {
            EventBody::AppInstalled => {
                assert_eq!(
                    (installs, opens),
                    (0, 0),
                    "round {round}: install not first"
                );
                installs += 1;
                pending_update = None;
                last = v.clone();
            }
            EventBody::AppUpdated {
                previous_version,
                previous_build,
            } => {
                assert_eq!(installs, 1, "round {round}: update before the install");
                assert_eq!(previous_version, &last, "round {round}: previous version");
                assert_eq!(
                    previous_build,
                    &last.as_ref().map(|l| format!("build-{l}")),
                    "round {round}: previous build"
                );
                assert_ne!(v, last, "round {round}: an update without a change");
                pending_update = Some((previous_version.clone(), previous_build.clone()));
                last = v.clone();
            }
            EventBody::AppOpened { from_background } => {
                assert!(!from_background);
                assert_eq!(
                    v, last,
                    "round {round}: opened {v:?} after {last:?} without an update"
                );
                opens += 1;
                pending_update = None;
            }
            EventBody::Custom { .. } => {
                let n = number(body).expect("numbered");
                assert!(seen_numbers.insert(n), "round {round}: event {n} twice");
                let (k, i) = (n / STRIDE, n % STRIDE);
                assert_eq!(
                    v.as_deref(),
                    Some(versions[k as usize]),
                    "round {round}: event {n} labelled with another version"
                );
                let want = if i < 5 {
                    NetworkType::Cellular
                } else {
                    NetworkType::Wifi
                };
                assert_eq!(c.network, Some(want), "round {round}: event {n}'s network");
            }
            other => panic!("round {round}: unexpected {other:?}"),
        }
    }
    assert!(pending_update.is_none(), "an update without its open");
    assert_eq!(installs, 1, "round {round}: installs");
    let durable_launches = started.iter().filter(|s| **s).count() + 1;
    assert!(
        opens >= durable_launches && opens <= versions.len() + 1,
        "round {round}: {opens} opens for {durable_launches} durable launches"
    );
    assert_eq!(last.as_deref(), Some("2.0"));
    let lost: Vec<_> = acked.difference(&seen_numbers).collect();
    assert!(lost.is_empty(), "round {round}: lost {lost:?}");
    assert!(tern.shutdown(WAIT).clean);
    acked.len()
}

fn main() {
    let child = |dir: &Path| {
        let version = std::env::var("TERN_CONTEXT_VERSION").expect("version");
        let launch = std::env::var("TERN_CONTEXT_LAUNCH")
            .ok()
            .and_then(|l| l.parse().ok())
            .expect("launch");
        child(dir, &version, launch);
    };
    let Some((rounds, acked)) =
        kill::run("TERN_CONTEXT_CHILD", "TERN_CONTEXT_ROUNDS", 8, child, round)
    else {
        return;
    };
    println!("context crash test: {rounds} rounds of 3 killed launches, {acked} events acknowledged, one install each, updates and opens as launched, every event in its own context");
    println!("1 passed, 0 failed");
}
