#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod deletions;
pub mod error;
pub mod faults;
pub mod http;
pub mod identities;
pub mod metrics;
pub mod store;
pub mod stub;

use std::future::Future;
use std::sync::Arc;

pub use config::{AppConfig, Content, StubConfig};
pub use error::{ConfigError, Error, Result};
pub use faults::{Faults, Scope};
pub use stub::{RegistryEntry, Stub};

/// Serves `stub` on `listener` until `shutdown` completes, then finishes in-flight
/// requests and returns. Bind the listener to port 0 in tests and read its address.
pub async fn run(
    listener: tokio::net::TcpListener,
    stub: Arc<Stub>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "serving");
    // Replies are small and latency-sensitive (a relay waits for each before it can
    // acknowledge devices): no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(listener, http::router(stub.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Io {
            what: "serving HTTP".into(),
            source,
        })?;
    // Every request admitted before shutdown has been answered, so every write it
    // made is committed; this just waits for the store queue to drain.
    stub.store().call(|_| Ok(())).await?;
    tracing::info!("stopped");
    Ok(())
}
