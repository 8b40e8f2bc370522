//! The clock of the relay's periodic tasks (the config poller, the admin sampler): a
//! tick every period on `tokio::time` (so tests can pause time), a slow round delaying
//! the next tick rather than bunching them, until a stop signal.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval, Interval, MissedTickBehavior};

/// Ticks every period until `stop` turns true.
#[derive(Debug)]
pub(crate) struct Every {
    tick: Interval,
    stop: watch::Receiver<bool>,
}

impl Every {
    /// Ticks every `period` (the first tick at once) until `stop` turns true.
    pub(crate) fn new(period: Duration, stop: watch::Receiver<bool>) -> Self {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { tick, stop }
    }

    /// Waits for the next tick: `true`, or `false` once the task should stop.
    pub(crate) async fn tick(&mut self) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = self.tick.tick() => {}
            _ = self.stop.changed() => {}
        }
        !*self.stop.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_every_period_on_tokio_time_until_stopped() {
        let (stop, stopped) = watch::channel(false);
        let mut every = Every::new(Duration::from_secs(60), stopped);
        let t0 = tokio::time::Instant::now();
        assert!(every.tick().await, "the first tick is at once");
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Paused time auto-advances to the next tick: an hour of ticks in no real time.
        for n in 1..=60u32 {
            assert!(every.tick().await);
            assert_eq!(t0.elapsed(), Duration::from_secs(60) * n);
        }
        stop.send(true).unwrap();
        assert!(!every.tick().await, "stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_a_tick() {
        let (stop, stopped) = watch::channel(false);
        let mut every = Every::new(Duration::from_secs(3600), stopped);
        assert!(every.tick().await);
        let t0 = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move { every.tick().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).unwrap();
        assert!(!waiter.await.unwrap());
        assert!(t0.elapsed() < Duration::from_secs(3600));
    }
}
