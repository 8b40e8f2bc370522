//! Consent and deletion requests under SIGKILL: a kill right after `set_consent()` or
//! `request_deletion()` returns loses neither, and what they decide holds after the
//! restart.
//!
//! Each round starts a child (this binary with `TERN_CONSENT_CHILD` set) on a fresh
//! directory, with every purpose pending by default. It records analytics events
//! 0..5 (held), denies messaging and records an impression (not kept), grants
//! analytics and prints `G`, records 5..10, identifies `bob`, prints `D <device id>`
//! once `request_deletion()` has returned, then records numbered events printing
//! `A <n>` after each. The parent SIGKILLs it as soon as it reads `G` (every third
//! round), `D`, or a few `A` lines after `D`, restarts the SDK on the directory and
//! checks:
//!
//! * analytics is granted and messaging denied, whatever the option now says;
//! * no message impression is ever in a batch;
//! * before a deletion request: events 0..10 that were recorded are all there, in
//!   order, with no sequence gap (the held ones released at the grant);
//! * after one: the first batch is the deletion request, under the old device id, naming
//!   `bob`; the store has a new device id; no event recorded before the request is
//!   left, and every event acknowledged after it is there, under the new device id.
//!
//! `TERN_CONSENT_ROUNDS` overrides the number of rounds (default 12).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tern_protocol::{DeviceId, EventBody, UserId};
use tern_sdk::{ConsentState, ConsentStates, Purpose, Tern, TernConfig};

#[path = "support/kill.rs"]
mod kill;
use kill::{number, numbered, WAIT};

fn config(dir: &Path, default: ConsentState) -> TernConfig {
    TernConfig::builder("crash", "key", dir)
        .default_consent(ConsentStates::all(default))
        .build()
        .expect("config")
}

fn child(dir: &Path) {
    let tern = Tern::start(config(dir, ConsentState::Pending)).expect("start");
    // Past the durability window of the first milliseconds (see `Stats::journal_ready`).
    assert!(tern.wait_applied(WAIT));
    for n in 0..5 {
        tern.track("held", numbered(n)).expect("track");
    }
    tern.set_consent(Purpose::Messaging, ConsentState::Denied)
        .expect("consent");
    tern.message_impression("m1", "shown").expect("impression");
    tern.set_consent(Purpose::Analytics, ConsentState::Granted)
        .expect("consent");
    let mut out = std::io::stdout().lock();
    writeln!(out, "G").expect("stdout");
    out.flush().expect("flush");
    for n in 5..10 {
        tern.track("granted", numbered(n)).expect("track");
    }
    tern.identify(Some("bob")).expect("identify");
    assert!(tern.wait_applied(WAIT));
    let device = tern.stats().device_id.expect("open store");
    tern.request_deletion().expect("request_deletion");
    writeln!(out, "D {device}").expect("stdout");
    out.flush().expect("flush");
    for n in 1000.. {
        tern.track("after deletion", numbered(n)).expect("track");
        writeln!(out, "A {n}").expect("stdout");
        out.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn round(exe: &Path, round: usize) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut granted, mut old) = (false, None);
    let mut acked = HashSet::new();
    let at_grant = round.is_multiple_of(3);
    let wait_for = if round % 3 == 2 { round } else { 0 };
    let path = dir.path().to_str().expect("utf-8 path");
    kill::kill_when(exe, &[("TERN_CONSENT_CHILD", path)], |line| {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next()) {
            (Some("G"), _) => granted = true,
            (Some("D"), Some(id)) => old = Some(DeviceId::parse(id).expect("id")),
            (Some("A"), Some(n)) => {
                acked.insert(n.parse::<i64>().expect("n"));
            }
            _ => {}
        }
        (at_grant && granted) || (old.is_some() && acked.len() >= wait_for)
    });
    assert!(granted, "round {round}: the child never granted");

    // Restarted with every purpose granted by default: the stored states win.
    let tern = Tern::start(config(dir.path(), ConsentState::Granted)).expect("restart");
    assert!(tern.wait_applied(WAIT));
    assert_eq!(tern.consent(Purpose::Analytics), ConsentState::Granted);
    assert_eq!(
        tern.consent(Purpose::Messaging),
        ConsentState::Denied,
        "round {round}: the denial was lost"
    );
    let now = tern.stats().device_id.expect("open store");
    tern.form_batches(true).expect("form");
    let mut before = Vec::new();
    let mut after = HashSet::new();
    let mut deletion_seen = false;
    let mut first = true;
    while let Some(b) = tern.next_batch().expect("next") {
        for e in &b.batch.events {
            match &e.body {
                EventBody::MessageImpression { .. } => {
                    panic!("round {round}: denied impression sent")
                }
                EventBody::DeletionRequest {
                    device_id, user_id, ..
                } => {
                    assert!(first, "round {round}: the deletion request was not first");
                    let old = old.expect("a deletion request only after D");
                    assert_eq!((b.batch.device_id, *device_id), (old, old));
                    assert_eq!(user_id.as_ref(), Some(&UserId::new("bob")));
                    deletion_seen = true;
                }
                body => {
                    let n = number(body).expect("numbered");
                    if n >= 1000 {
                        assert_eq!(b.batch.device_id, now, "round {round}: event {n}");
                        assert_eq!(e.user_id, None, "round {round}: event {n}");
                        after.insert(n);
                    } else {
                        before.push((e.seq, n));
                    }
                }
            }
        }
        first = false;
        tern.ack(b.batch.batch_id).expect("ack");
    }
    match old {
        Some(old) => {
            assert!(
                deletion_seen,
                "round {round}: the deletion request was lost"
            );
            assert_ne!(now, old, "round {round}: the device id was kept");
            assert!(
                before.is_empty(),
                "round {round}: {before:?} survived the deletion"
            );
        }
        None => {
            // Held events 0..5 released at the grant, in order, with no gap.
            let ns: Vec<i64> = before.iter().map(|(_, n)| *n).collect();
            assert_eq!(
                ns,
                (0..ns.len() as i64).collect::<Vec<_>>(),
                "round {round}"
            );
            assert!(ns.len() >= 5, "round {round}: held events lost: {ns:?}");
            let seqs: Vec<u64> = before.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "round {round}"
            );
        }
    }
    let lost: Vec<_> = acked.difference(&after).collect();
    assert!(lost.is_empty(), "round {round}: lost {lost:?}");
    assert!(tern.shutdown(WAIT).clean);
    acked.len()
}

fn main() {
    let Some((rounds, acked)) = kill::run(
        "TERN_CONSENT_CHILD",
        "TERN_CONSENT_ROUNDS",
        12,
        child,
        round,
    ) else {
        return;
    };
    println!("consent crash test: {rounds} rounds, {acked} events acknowledged after a deletion request, none lost; no consent change lost");
    println!("1 passed, 0 failed");
}
