//! SDK devices for the end-to-end suites: a [`Tern`] of app `demo` trusting the
//! stack's certificate, with short waits so a test sees batches, retries and fallbacks
//! within seconds.

use std::path::Path;
use std::time::Duration;

use tern_protocol::{Properties, ShardMap};
use tern_sdk::transport::TransportConfig;
use tern_sdk::upload::UploadConfig;
use tern_sdk::{FlushPolicy, RetryPolicy, Tern, TernConfigBuilder};

/// A flush policy: batches of at most `max_events`, sent after 200 ms.
pub fn flush(max_events: u32) -> FlushPolicy {
    FlushPolicy::default()
        .with_max_batch_events(max_events)
        .with_max_batch_age(Duration::from_millis(200))
}

/// A transport trusting only `ca`, with the given connect and request timeouts.
pub fn transport(ca: &str, connect: Duration, request: Duration) -> TransportConfig {
    TransportConfig::default()
        .with_only_ca(ca)
        .with_connect_timeout(connect)
        .with_request_timeout(request)
}

/// An uploader trusting only `ca`: connect 500 ms, request 3 s, retries from 100 ms.
pub fn upload(ca: &str) -> UploadConfig {
    UploadConfig::default()
        .with_transport(transport(
            ca,
            Duration::from_millis(500),
            Duration::from_secs(3),
        ))
        .with_retry(RetryPolicy::default().with_base(Duration::from_millis(100)))
}

/// A device of app `demo` with `key` in `dir`, seeded with `map`: batches of 100 events
/// flushed after 200 ms, the [`upload`] settings. Adjust before [`start`].
pub fn builder(dir: &Path, key: &str, map: ShardMap, ca: &str) -> TernConfigBuilder {
    tern_sdk::TernConfig::builder("demo", key, dir)
        .shard_map(map)
        .flush_policy(flush(100))
        .upload(upload(ca))
}

/// Starts the device `builder` describes (panics on a config error).
pub fn start(builder: TernConfigBuilder) -> Tern {
    Tern::start(builder.build().expect("device config")).expect("device start")
}

/// Records `n` `level_up` events with a property `i` = 0..n.
pub fn track(tern: &Tern, n: usize) {
    for i in 0..n {
        let mut props = Properties::new();
        props.insert("i".into(), (i as i64).into());
        tern.track("level_up", props).expect("track");
    }
}
