//! Instances reachable by a number: the Kotlin layer's fast `track` path
//! ([`crate::fast`]) names an instance by an id instead of a handle. Weak references, so
//! a registered instance is still dropped when the app lets go of it; slots of dropped
//! instances are reused.

use std::sync::{Arc, RwLock, Weak};

/// Instances by id (index + 1; 0 is never an id).
pub(crate) struct Registry<T>(RwLock<Vec<Weak<T>>>);

impl<T> Registry<T> {
    /// An empty registry (usable in a `static`).
    pub(crate) const fn new() -> Self {
        Registry(RwLock::new(Vec::new()))
    }

    /// Registers `item` (once: the same instance keeps its id); returns its id.
    pub(crate) fn register(&self, item: &Arc<T>) -> u64 {
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        let weak = Arc::downgrade(item);
        if let Some(i) = all.iter().position(|w| w.ptr_eq(&weak)) {
            return i as u64 + 1;
        }
        match all.iter().position(|w| w.strong_count() == 0) {
            Some(i) => {
                all[i] = weak;
                i as u64 + 1
            }
            None => {
                all.push(weak);
                all.len() as u64
            }
        }
    }

    /// The instance of `id`, while it lives.
    pub(crate) fn lookup(&self, id: u64) -> Option<Arc<T>> {
        let all = self.0.read().unwrap_or_else(|p| p.into_inner());
        all.get(usize::try_from(id).ok()?.checked_sub(1)?)?
            .upgrade()
    }
}
