//! Group commit's shared step: after a first item arrives, collect more until a linger
//! deadline or a size limit. Used by the forwarder (one backend request) and the spool
//! (one object PUT).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The next group of a group-commit loop: waits for a first item, then for one of
/// `slots` (while every slot is busy, items queue and the next group takes them all,
/// so coalescing under load costs no extra latency), then [`collect`]s. `None` once
/// `rx` or `slots` is closed.
pub(crate) async fn next_group<T>(
    rx: &mut mpsc::Receiver<T>,
    slots: &Arc<Semaphore>,
    linger: Duration,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let first = rx.recv().await?;
    let slot = slots.clone().acquire_owned().await.ok()?;
    let items = collect(rx, first, linger, max_items, max_bytes, size).await;
    Some((slot, items))
}

/// Collects `first` and whatever else arrives on `rx` within `linger`, stopping at
/// `max_items` items or once their `size` reaches `max_bytes`.
pub(crate) async fn collect<T>(
    rx: &mut mpsc::Receiver<T>,
    first: T,
    linger: Duration,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut bytes = size(&first);
    let mut items = vec![first];
    if linger.is_zero() {
        // No waiting: take what is already queued.
        while items.len() < max_items && bytes < max_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += size(&item);
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        return items;
    }
    let deadline = tokio::time::Instant::now() + linger;
    while items.len() < max_items && bytes < max_bytes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => {
                bytes += size(&item);
                items.push(item);
            }
            Ok(None) | Err(_) => break,
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_linger_takes_only_what_is_queued() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=3u32 {
            tx.send(i).await.unwrap();
        }
        let got = collect(&mut rx, 0, Duration::ZERO, 100, usize::MAX, |_| 1).await;
        assert_eq!(got, vec![0, 1, 2, 3]);
        // Nothing queued: the first item goes alone, at once.
        let got = collect(&mut rx, 9, Duration::ZERO, 100, usize::MAX, |_| 1).await;
        assert_eq!(got, vec![9]);
    }

    #[tokio::test]
    async fn limits_stop_collection_with_or_without_linger() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=9u32 {
            tx.send(i).await.unwrap();
        }
        let got = collect(&mut rx, 0, Duration::ZERO, 3, usize::MAX, |_| 1).await;
        assert_eq!(got, vec![0, 1, 2]);
        // Bytes: stops once the sum reaches max_bytes.
        let got = collect(&mut rx, 0, Duration::from_millis(5), 100, 10, |_| 4).await;
        assert_eq!(got, vec![0, 3, 4]);
        assert_eq!(rx.try_recv().unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_gathers_what_arrives_within_it() {
        let (tx, mut rx) = mpsc::channel(16);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(1u32).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(2u32).await.unwrap();
        });
        let got = collect(&mut rx, 0, Duration::from_millis(5), 100, usize::MAX, |_| 1).await;
        assert_eq!(got, vec![0, 1]);
        sender.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
    }
}
