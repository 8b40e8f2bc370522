//! Long-lived streams as callback interfaces with a cancel handle.
//!
//! The instance keeps every registered listener until the handle's `cancel` or the
//! instance's `shutdown`: a handle the app drops (or a garbage collector frees) does
//! not remove its listener. Listeners registered before the instance opens are
//! attached when it does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::types::{ConfigChange, InAppMessage};

/// Receives config changes, on the SDK's `tern-live` thread (never the main thread).
/// An exception thrown here is contained and counted in `TernStats.listener_panics`.
#[uniffi::export(callback_interface)]
pub trait ConfigChangeListener: Send + Sync {
    /// The config bundle or the flag decisions changed.
    fn on_config_changed(&self, change: ConfigChange);
}

/// Receives in-app messages to show, on the SDK's `tern-live` thread. The impression
/// (`shown`) is already recorded; report taps with `message_impression`.
#[uniffi::export(callback_interface)]
pub trait InAppMessageListener: Send + Sync {
    /// Show `message` now.
    fn on_message(&self, message: InAppMessage);
}

pub(crate) struct ConfigAdapter(Box<dyn ConfigChangeListener>);

impl tern_sdk::ConfigListener for ConfigAdapter {
    fn on_config_changed(&self, change: &tern_sdk::ConfigChange) {
        self.0.on_config_changed(change.into());
    }
}

pub(crate) struct MessageAdapter(Box<dyn InAppMessageListener>);

impl tern_sdk::MessageListener for MessageAdapter {
    fn on_message(&self, message: &tern_sdk::InAppMessage) {
        self.0.on_message(message.into());
    }
}

/// A listener to register.
pub(crate) enum Registration {
    Config(Arc<ConfigAdapter>),
    Message(Arc<MessageAdapter>),
}

impl Registration {
    pub(crate) fn config(l: Box<dyn ConfigChangeListener>) -> Self {
        Registration::Config(Arc::new(ConfigAdapter(l)))
    }

    pub(crate) fn message(l: Box<dyn InAppMessageListener>) -> Self {
        Registration::Message(Arc::new(MessageAdapter(l)))
    }

    fn attach(&self, tern: &tern_sdk::Tern) -> tern_sdk::ListenerHandle {
        match self {
            Registration::Config(l) => tern.add_config_listener(l.clone()),
            Registration::Message(l) => tern.add_message_listener(l.clone()),
        }
    }
}

struct Entry {
    id: u64,
    listener: Registration,
    /// Set once attached to a running core; dropping it detaches.
    attached: Option<tern_sdk::ListenerHandle>,
}

/// The listeners of one instance.
#[derive(Default)]
pub(crate) struct Listeners {
    next: u64,
    entries: Vec<Entry>,
}

impl Listeners {
    /// Registers `listener`, attached at once when `running`. Returns its id.
    pub(crate) fn add(&mut self, listener: Registration, running: Option<&tern_sdk::Tern>) -> u64 {
        self.next += 1;
        let attached = running.map(|t| listener.attach(t));
        self.entries.push(Entry {
            id: self.next,
            listener,
            attached,
        });
        self.next
    }

    /// Attaches every listener not attached yet to `tern`.
    pub(crate) fn attach(&mut self, tern: &tern_sdk::Tern) {
        for e in &mut self.entries {
            if e.attached.is_none() {
                e.attached = Some(e.listener.attach(tern));
            }
        }
    }

    /// Removes every listener (the instance stopped).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn all_attached(&self) -> bool {
        self.entries.iter().all(|e| e.attached.is_some())
    }
}

/// A registered listener. `cancel()` removes it; after `cancel` returns no new call to
/// the listener starts. Dropping the handle does not remove the listener.
#[derive(Debug, uniffi::Object)]
pub struct ListenerHandle {
    registry: Weak<Mutex<Listeners>>,
    id: u64,
    cancelled: AtomicBool,
}

impl ListenerHandle {
    pub(crate) fn new(registry: Weak<Mutex<Listeners>>, id: u64) -> Self {
        ListenerHandle {
            registry,
            id,
            cancelled: AtomicBool::new(false),
        }
    }

    /// A handle whose listener will never be called (the instance is stopped or could
    /// not start).
    pub(crate) fn cancelled() -> Self {
        ListenerHandle {
            registry: Weak::new(),
            id: 0,
            cancelled: AtomicBool::new(true),
        }
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.entries.len())
            .finish()
    }
}

#[uniffi::export]
impl ListenerHandle {
    /// Removes the listener. Idempotent.
    pub fn cancel(&self) {
        crate::guard::guard_or("cancel", (), || {
            if self.cancelled.swap(true, Ordering::AcqRel) {
                return;
            }
            if let Some(r) = self.registry.upgrade() {
                // Dropping the entry drops the core's handle, which removes the
                // listener from the core before this returns.
                let entry = {
                    let mut l = r.lock().unwrap_or_else(|p| p.into_inner());
                    let pos = l.entries.iter().position(|e| e.id == self.id);
                    pos.map(|p| l.entries.remove(p))
                };
                drop(entry);
            }
        });
    }

    /// Whether the listener was cancelled (or the instance stopped).
    pub fn is_cancelled(&self) -> bool {
        crate::guard::guard_or("is_cancelled", true, || {
            self.cancelled.load(Ordering::Acquire)
                || self.registry.upgrade().is_none_or(|r| {
                    !r.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entries
                        .iter()
                        .any(|e| e.id == self.id)
                })
        })
    }
}
