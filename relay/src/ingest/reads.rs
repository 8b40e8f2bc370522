//! The read side of the handler: `ConfigRequest`s answered from the
//! [`ConfigCache`](crate::remote::cache::ConfigCache), and push streams opened with a
//! `SubscribeRequest` on the [`PushHub`](crate::remote::push::PushHub).
//!
//! Credentials are checked as for ingest: before the app registry has loaded, a config
//! request gets `Retry` (never `Rejected`: the app may simply not be known yet), an
//! unknown app or wrong key gets `Rejected{unauthorized}`. A device only ever gets the
//! bundle of `auth.app_id`, and a subscriber only the config notices of its own app.

use std::time::Duration;

use tokio::time::Instant;

use tern_protocol::{
    decode_payload, decode_single_frame_ref, CodecConfig, ConfigOutcome, ConfigReply,
    ConfigRequest, DecodeError, ETag, Message, MessageKind, PushNotice, RejectReason,
    SubscribeRequest,
};

use super::{ms, Ingest};
use crate::policy::apps::AuthCheck;
use crate::policy::controls::Controls;
use crate::remote::cache::{ConfigCache, Lookup};
use crate::remote::push::{encode_notice, Subscription};

/// How long a subscription waits for the app registry to load before it is refused.
const REGISTRY_WAIT: Duration = Duration::from_secs(10);

/// The result of opening a push stream.
#[derive(Debug)]
pub enum PushStream {
    /// Refused: write this `ErrorReply` frame and finish the stream.
    Refused(Vec<u8>),
    /// Open: write `first` (the `Subscribed` frame), then each notice of
    /// `subscription` (see [`encode_notice`]) until it ends or the client leaves.
    Open {
        /// The encoded `Subscribed` notice.
        first: Vec<u8>,
        /// The notices to follow.
        subscription: Subscription,
    },
}

fn count(outcome: &'static str) {
    metrics::counter!("tern_relay_config_requests_total", "outcome" => outcome).increment(1);
}

impl Ingest {
    pub(super) fn config_request(&self, req: &ConfigRequest) -> Message {
        let Some(cache) = &self.svc.config_cache else {
            return self.error(
                RejectReason::UnsupportedMessage,
                "this relay does not serve config",
            );
        };
        let reply = |outcome, stale| {
            Message::ConfigReply(ConfigReply {
                shard_map_version: self.map().version,
                stale,
                outcome,
            })
        };
        if self.svc.registry.check(&req.auth) != AuthCheck::Ok {
            if !self.svc.registry.is_loaded() {
                count("retry");
                let after_ms = ms(self.config.busy_retry_after);
                return reply(ConfigOutcome::Retry { after_ms }, false);
            }
            count("rejected");
            return reply(
                ConfigOutcome::Rejected {
                    reason: RejectReason::Unauthorized,
                    detail: "unknown app or wrong key".into(),
                },
                false,
            );
        }
        let messages_off = self.svc.controls.messages_off();
        // With messages off, devices get the bundle without messages under its own
        // ETag: a device holding the full bundle sees a change and drops the messages.
        let if_none_match = match (&req.if_none_match, messages_off) {
            (Some(tag), true) => without_messages_tag(tag),
            (tag, _) => tag.clone(),
        };
        let served = cache.lookup(&req.auth.app_id, if_none_match.as_ref());
        let outcome = match served.lookup {
            Lookup::Modified(bundle) => {
                count("modified");
                let mut bundle = (*bundle).clone();
                if messages_off {
                    bundle.messages.clear();
                    bundle.etag = messages_off_etag(&bundle.etag);
                }
                ConfigOutcome::Modified { bundle }
            }
            Lookup::NotModified => {
                count("not_modified");
                ConfigOutcome::NotModified
            }
            Lookup::Retry(after) => {
                count("retry");
                ConfigOutcome::Retry {
                    after_ms: ms(after),
                }
            }
        };
        reply(outcome, served.stale)
    }

    fn refuse(&self, reason: RejectReason, detail: &str) -> PushStream {
        let msg = self.error(reason, detail);
        PushStream::Refused(msg.encode(&CodecConfig::device()).unwrap_or_default())
    }

    /// Opens a push stream for the request frame `frame` (which should hold a
    /// `SubscribeRequest`). The frame is checked as every request is (docs/protocol.md
    /// §3: the kind before the body). Waits up to 10 s for the app registry if it has
    /// not loaded yet, so devices are not refused for an app the relay has not heard
    /// of yet.
    pub async fn open_push_stream(&self, frame: &[u8]) -> PushStream {
        let cfg = CodecConfig::device();
        let decoded = decode_single_frame_ref(frame, cfg.max_payload).and_then(|f| {
            if f.kind != MessageKind::SubscribeRequest.as_u8() {
                return Err(DecodeError::UnexpectedKind {
                    expected: MessageKind::SubscribeRequest,
                    got: f.kind,
                });
            }
            decode_payload::<SubscribeRequest>(&f.payload(cfg.max_payload)?)
        });
        let req = match decoded {
            Ok(req) => req,
            Err(DecodeError::UnexpectedKind { got, .. }) => {
                let kind = MessageKind::from_u8(got)
                    .map_or_else(|| format!("kind {got:#04x}"), |k| format!("{k:?}"));
                return self.refuse(
                    RejectReason::UnsupportedMessage,
                    &format!("a push stream starts with a SubscribeRequest, not {kind}"),
                );
            }
            Err(e) => {
                let msg = self.decode_error(&e);
                return PushStream::Refused(msg.encode(&cfg).unwrap_or_default());
            }
        };
        self.subscribe(&req).await
    }

    async fn subscribe(&self, req: &SubscribeRequest) -> PushStream {
        let Some(hub) = &self.svc.push_hub else {
            return self.refuse(
                RejectReason::UnsupportedMessage,
                "this relay does not serve push",
            );
        };
        if self.svc.controls.push_off() {
            return self.refuse(
                RejectReason::UnsupportedMessage,
                "live push is turned off on this relay; poll for config",
            );
        }
        let deadline = Instant::now() + REGISTRY_WAIT;
        while !self.svc.registry.is_loaded() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.svc.registry.check(&req.auth) != AuthCheck::Ok {
            let detail = if self.svc.registry.is_loaded() {
                "unknown app or wrong key"
            } else {
                "app registry not loaded yet; subscribe again later"
            };
            return self.refuse(RejectReason::Unauthorized, detail);
        }
        // Register before reading the current versions: a change in between is then
        // announced (perhaps twice), never missed.
        let Some(subscription) = hub.subscribe(req.auth.app_id.clone()) else {
            return self.refuse(RejectReason::UnsupportedMessage, "relay stopping");
        };
        let first = encode_notice(&PushNotice::Subscribed {
            shard_map_version: self.map().version,
            config_etag: self
                .svc
                .config_cache
                .as_ref()
                .and_then(|c| served_etag(c, &self.svc.controls, &req.auth.app_id)),
        });
        PushStream::Open {
            first,
            subscription,
        }
    }
}

/// Suffix of the ETag of a bundle served without its messages.
const MESSAGES_OFF_SUFFIX: &str = "~no-messages";

/// The ETag of `etag`'s bundle served without messages.
pub fn messages_off_etag(etag: &ETag) -> ETag {
    ETag(format!("{}{MESSAGES_OFF_SUFFIX}", etag.as_str()))
}

/// The full bundle's ETag for a device's `If-None-Match` while messages are off: a
/// device holding the message-less bundle matches; one holding the full bundle (or
/// anything else) does not.
fn without_messages_tag(tag: &ETag) -> Option<ETag> {
    tag.as_str()
        .strip_suffix(MESSAGES_OFF_SUFFIX)
        .map(|full| ETag(full.to_owned()))
}

/// The ETag devices of `app` should hold now (the message-less variant while messages
/// are off), `None` when `cache` holds no bundle for it.
pub fn served_etag(
    cache: &ConfigCache,
    controls: &Controls,
    app: &tern_protocol::AppId,
) -> Option<ETag> {
    let etag = cache.etag(app)?;
    Some(if controls.messages_off() {
        messages_off_etag(&etag)
    } else {
        etag
    })
}
