//! The SDK core as a shared library, for measuring its size (`scripts/footprint.sh`).
//!
//! One exported function drives the whole public API — start, track, identify,
//! purchase, batching, the uploader interface, frame encoding, live config, flags and
//! message listeners, shutdown — so link-time
//! optimisation keeps every part an app would use. The bindings crate (issue #6) will
//! replace this with the real uniffi library; until then this is the honest size of the
//! core alone (no uniffi, no network stack).

// `#[no_mangle]` counts as unsafe code: it is needed to export a C symbol.
#![allow(unsafe_code)]

use std::time::Duration;

use tern_protocol::{CodecConfig, IngestRequest, Message, Value};
use tern_sdk::{Properties, Tern, TernConfig};

/// Runs a short session against `$TERN_FOOTPRINT_DIR` and returns the number of events
/// sent, or 0 on any error.
#[no_mangle]
pub extern "C" fn tern_footprint_run(events: u32) -> u32 {
    let Some(dir) = std::env::var_os("TERN_FOOTPRINT_DIR") else {
        return 0;
    };
    let Ok(config) = TernConfig::builder("app", "key", dir).build() else {
        return 0;
    };
    let Ok(tern) = Tern::start(config) else {
        return 0;
    };
    let _ = tern.identify(Some("user"));
    let _config = tern.add_config_listener(std::sync::Arc::new(|_: &tern_sdk::ConfigChange| {}));
    let _messages = tern.add_message_listener(std::sync::Arc::new(|_: &tern_sdk::InAppMessage| {}));
    let _ = tern.config_string("title", "");
    let _ = tern.config_f64("ratio", 0.0);
    let _ = tern.flag_enabled("flag");
    let _ = tern.config_info();
    let _ = tern.on_foreground();
    for i in 0..events {
        let mut p = Properties::new();
        p.insert("i".into(), Value::Int(i.into()));
        let _ = tern.track("event", p);
    }
    let _ = tern.purchase("sku", 990_000, "USD", 1, Properties::new());
    let _ = tern.set_user_properties(Properties::new(), vec!["x".into()]);
    tern.wait_applied(Duration::from_secs(5));
    let _ = tern.form_batches(true);
    let mut sent = 0;
    while let Ok(Some(b)) = tern.next_batch() {
        let frame = Message::IngestRequest(IngestRequest {
            auth: tern_protocol::Auth {
                app_id: b.batch.app_id.clone(),
                key: "key".into(),
            },
            batch: b.batch.clone(),
        })
        .encode(&CodecConfig::device());
        if frame.is_ok() && tern.ack(b.batch.batch_id).is_ok() {
            sent += b.batch.events.len() as u32;
        }
    }
    let _ = tern.stats();
    tern.shutdown(Duration::from_secs(5));
    sent
}
