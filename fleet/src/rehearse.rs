//! The parent side of a replay ([`crate::replay`]): reads the recording again in time
//! order, paces it ([`Pacing`]) and sends each batch to the pod hosting its device as a
//! [`PodCommand::Replay`], with at most [`WINDOW`] unanswered per pod; then waits until
//! every pod has applied what it was sent. Apart from [`crate::replay`] so that the pod
//! side ([`crate::pods`] → [`crate::replay::PodReplayer`]) and this driver
//! (→ [`crate::pods::Pods`]) do not depend on each other in a cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tern_relay::ingest::playback::RecordingReader;

use crate::pods::{PodCommand, Pods};
use crate::replay::{
    reading_error, DevicePlan, Disposition, Pacing, ReplayCounts, ReplayOptions, ReplayRun,
    MAX_EVENTS_PER_COMMAND, WINDOW,
};
use crate::{FleetError, Result};

/// How long the end of a replay waits for a pod that answers nothing.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the replay stands with each pod.
struct Flow {
    sent: Vec<u64>,
    counts: Vec<ReplayCounts>,
    last_answer: Instant,
}

impl Flow {
    /// Takes in the pods' answers.
    fn absorb(&mut self, pods: &mut Pods) -> Result<()> {
        for k in 0..pods.len() {
            for line in pods.lines(k)? {
                if line["event"] == "replayed" {
                    if let Ok(c) = serde_json::from_value::<ReplayCounts>(line["counts"].clone()) {
                        self.counts[k] = c;
                        self.last_answer = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }

    fn open(&self, k: usize) -> u64 {
        self.sent[k].saturating_sub(self.counts[k].batches)
    }
}

/// Replays the recording of `options` through `pods`, started with `devices` devices
/// (the scan's [`crate::replay::RecordingSummary::devices_replayed`]): reads it again
/// in time order, sends each batch to the pod hosting its device when it is due, and
/// returns once every pod has applied everything sent (or `stop` was set). `progress`
/// gets the events sent so far about ten times a second.
pub fn drive(
    runtime: &tokio::runtime::Handle,
    pods: &mut Pods,
    options: &ReplayOptions,
    devices: usize,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<ReplayRun> {
    let mut reader = runtime
        .block_on(RecordingReader::open_dir(&options.dir, &options.prefix))
        .map_err(|e| reading_error(options, e))?;
    let mut plan = DevicePlan::new(devices);
    let mut pacing = Pacing::new(options.speed);
    let mut flow = Flow {
        sent: vec![0; pods.len()],
        counts: vec![ReplayCounts::default(); pods.len()],
        last_answer: Instant::now(),
    };
    let mut run = ReplayRun::default();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let pause = Duration::from_millis(2);
    'batches: while let Some(r) = runtime.block_on(reader.next()) {
        let device = match plan.classify(&r.batch) {
            Disposition::Replay(i) => i,
            Disposition::Resend => {
                run.resent_batches += 1;
                continue;
            }
            Disposition::OverCap => {
                run.batches_over_cap += 1;
                continue;
            }
        };
        let Some(k) = pods.pod_of(device) else {
            run.batches_over_cap += 1;
            continue;
        };
        let due = start + pacing.due(r.at_ms);
        loop {
            if stop.load(Ordering::Relaxed) {
                run.stopped = true;
                break 'batches;
            }
            flow.absorb(pods)?;
            let now = Instant::now();
            if now >= due && flow.open(k) < WINDOW {
                break;
            }
            // Until it is due, or a while for the pod's answers; either way the loop
            // looks at the pods and the stop switch again.
            let wait = due.saturating_duration_since(now);
            std::thread::sleep(if wait.is_zero() {
                pause
            } else {
                wait.min(pause)
            });
        }
        let lag = Instant::now().saturating_duration_since(due);
        run.max_lag_ms = run.max_lag_ms.max(lag.as_millis() as u64);
        let n = r.batch.events.len() as u64;
        let mut events = r.batch.events;
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(MAX_EVENTS_PER_COMMAND));
            pods.send(k, &PodCommand::Replay { device, events })?;
            flow.sent[k] += 1;
            events = rest;
        }
        run.batches += 1;
        run.events += n;
        if last_progress.elapsed() >= Duration::from_millis(100) {
            progress(run.events);
            last_progress = Instant::now();
        }
    }
    // Every pod applies what it was sent.
    flow.last_answer = Instant::now();
    while (0..pods.len()).any(|k| flow.open(k) > 0) {
        flow.absorb(pods)?;
        if flow.last_answer.elapsed() > ANSWER_TIMEOUT {
            return Err(FleetError::NotReady {
                what: "replay".into(),
                detail: format!("pods answered nothing for {ANSWER_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(pause);
    }
    progress(run.events);
    for c in &flow.counts {
        run.counts.add(c);
    }
    run.seconds = start.elapsed().as_secs_f64();
    Ok(run)
}
