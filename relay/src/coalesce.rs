//! Group commit's shared step: after a first item arrives, collect more until a linger
//! deadline or a size limit. Used by the forwarder (one backend request) and the spool
//! (one object PUT).

use std::time::Duration;

use tokio::sync::mpsc;

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
