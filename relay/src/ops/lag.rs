//! Runtime lag: how late the relay's async runtime runs a timer, the relay's own
//! event-loop delay. A relay whose tasks wait seconds for a thread (a host
//! oversubscribed, a blocking call on a runtime thread) answers its devices seconds
//! late, and devices that hear nothing for over a second with a request outstanding
//! take it for dead and fail over (`docs/operations.md`). This samples it into the
//! histogram `tern_relay_runtime_lag_seconds`.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::periodic::Every;

/// How often the lag is sampled.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Records how late each tick of a [`PERIOD`] timer fires until `stop` turns true.
pub async fn sample(stop: watch::Receiver<bool>) {
    let mut every = Every::new(PERIOD, stop);
    let mut due = Instant::now();
    while every.tick().await {
        let now = Instant::now();
        metrics::histogram!("tern_relay_runtime_lag_seconds").record(late(due, now).as_secs_f64());
        due = now + PERIOD;
    }
}

/// How far past `due` `now` is (zero when on time or early).
fn late(due: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_the_time_past_due() {
        let t = Instant::now();
        assert_eq!(
            late(t, t + Duration::from_millis(30)),
            Duration::from_millis(30)
        );
        assert_eq!(late(t + Duration::from_millis(30), t), Duration::ZERO);
    }

    /// On a paused clock the sampler ticks every period and stops on the signal.
    #[tokio::test(start_paused = true)]
    async fn samples_until_stopped() {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(sample(stopped));
        tokio::time::sleep(PERIOD * 5).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stopped")
            .unwrap();
    }
}
