//! The payload encoding: MessagePack with named fields (self-describing; unknown
//! fields are skipped, missing optional fields take defaults; [`crate::wire`]), inside
//! a frame that compresses large payloads with LZ4. See `BENCHMARKS.md` for why.

use crate::wire::{Decode, Encode};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{decode_single_frame, encode_frame, Frame};
use crate::limits;
use crate::messages::{Message, MessageKind};

/// Payloads at least this long are LZ4-compressed when that makes them smaller.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;

/// Encoding settings for one side of a connection.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct CodecConfig {
    /// Compress payloads of at least this many bytes.
    pub compress_threshold: usize,
    /// Largest payload (after decompression) accepted or produced.
    pub max_payload: usize,
}

impl CodecConfig {
    /// Device ↔ relay settings: payloads up to [`limits::MAX_DEVICE_PAYLOAD`].
    pub const fn device() -> Self {
        CodecConfig {
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            max_payload: limits::MAX_DEVICE_PAYLOAD,
        }
    }

    /// Relay ↔ backend settings: payloads up to [`limits::MAX_BACKEND_PAYLOAD`].
    pub const fn backend() -> Self {
        CodecConfig {
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            max_payload: limits::MAX_BACKEND_PAYLOAD,
        }
    }

    /// Sets the compression threshold (`usize::MAX` disables compression).
    pub const fn with_compress_threshold(mut self, bytes: usize) -> Self {
        self.compress_threshold = bytes;
        self
    }

    /// Sets the payload maximum.
    pub const fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self::device()
    }
}

/// Encodes a value as a MessagePack payload (maps with field names). Never fails for
/// the protocol's types; the `Result` is kept for encoders of other types.
pub fn encode_payload<T: Encode + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    Ok(crate::wire::to_vec(value))
}

/// Decodes a MessagePack payload: exactly one value. Unknown fields are ignored.
pub fn decode_payload<T: Decode>(bytes: &[u8]) -> Result<T, DecodeError> {
    crate::wire::from_slice(bytes).map_err(|e| DecodeError::Payload(e.to_string()))
}

/// The encoded payload length of a value, without keeping the bytes.
pub fn encoded_len<T: Encode + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    Ok(crate::wire::encoded_len(value))
}

fn to_frame<T: Encode>(
    kind: MessageKind,
    value: &T,
    cfg: &CodecConfig,
) -> Result<Vec<u8>, EncodeError> {
    let payload = encode_payload(value)?;
    if payload.len() > cfg.max_payload {
        return Err(EncodeError::TooLarge {
            len: payload.len(),
            max: cfg.max_payload,
        });
    }
    Ok(encode_frame(kind.as_u8(), &payload, cfg.compress_threshold))
}

/// Encodes a `ForwardRequest` frame from borrowed batches; the bytes are identical to
/// `Message::ForwardRequest(..).encode(cfg)` of the same content.
pub fn encode_forward_request(
    req: &crate::messages::ForwardRequestRef<'_>,
    cfg: &CodecConfig,
) -> Result<Vec<u8>, EncodeError> {
    to_frame(MessageKind::ForwardRequest, req, cfg)
}

/// Encodes a `ForwardRequest` frame around batches that are already encoded, copying
/// their bytes in unchanged: each of `batches` must be one complete MessagePack
/// `EventBatch` value — the bytes a device sent ([`crate::view::BatchView::bytes`]) or
/// [`encode_payload`] of a batch. With the latter, the frame is byte-identical to
/// [`encode_forward_request`] of the same batches.
pub fn encode_forward_request_raw(
    relay_id: &crate::RelayId,
    batches: &[&[u8]],
    cfg: &CodecConfig,
) -> Result<Vec<u8>, EncodeError> {
    let relay = relay_id.as_str();
    let len = 32 + relay.len() + batches.iter().map(|b| b.len()).sum::<usize>();
    let mut payload = Vec::with_capacity(len);
    // {"relay_id": <str>, "batches": [<batch>...]}, as rmp-serde writes the struct.
    payload.push(0x82);
    payload.push(0xa8);
    payload.extend_from_slice(b"relay_id");
    write_str_header(&mut payload, relay.len());
    payload.extend_from_slice(relay.as_bytes());
    payload.push(0xa7);
    payload.extend_from_slice(b"batches");
    write_array_header(&mut payload, batches.len());
    for batch in batches {
        payload.extend_from_slice(batch);
    }
    if payload.len() > cfg.max_payload {
        return Err(EncodeError::TooLarge {
            len: payload.len(),
            max: cfg.max_payload,
        });
    }
    Ok(encode_frame(
        MessageKind::ForwardRequest.as_u8(),
        &payload,
        cfg.compress_threshold,
    ))
}

fn write_str_header(out: &mut Vec<u8>, len: usize) {
    // Lengths here are bounded by the payload maximum, far below 4 GiB.
    match len {
        0..=31 => out.push(0xa0 | len as u8),
        32..=255 => out.extend_from_slice(&[0xd9, len as u8]),
        256..=65_535 => {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn write_array_header(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=15 => out.push(0x90 | len as u8),
        16..=65_535 => {
            out.push(0xdc);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

impl Message {
    /// Encodes the message as one complete frame.
    pub fn encode(&self, cfg: &CodecConfig) -> Result<Vec<u8>, EncodeError> {
        let kind = self.kind();
        match self {
            Message::IngestRequest(m) => to_frame(kind, m, cfg),
            Message::ConfigRequest(m) => to_frame(kind, m, cfg),
            Message::ShardMapRequest(m) => to_frame(kind, m, cfg),
            Message::SubscribeRequest(m) => to_frame(kind, m, cfg),
            Message::ForwardRequest(m) => to_frame(kind, m, cfg),
            Message::IngestReply(m) => to_frame(kind, m, cfg),
            Message::ConfigReply(m) => to_frame(kind, m, cfg),
            Message::ShardMapReply(m) => to_frame(kind, m, cfg),
            Message::PushNotice(m) => to_frame(kind, m, cfg),
            Message::ForwardReply(m) => to_frame(kind, m, cfg),
            Message::ErrorReply(m) => to_frame(kind, m, cfg),
        }
    }

    /// Decodes a frame into a message.
    pub fn decode(frame: &Frame, cfg: &CodecConfig) -> Result<Message, DecodeError> {
        let kind = MessageKind::from_u8(frame.kind).ok_or(DecodeError::UnknownKind(frame.kind))?;
        let payload = frame.payload(cfg.max_payload)?;
        let p: &[u8] = &payload;
        Ok(match kind {
            MessageKind::IngestRequest => Message::IngestRequest(decode_payload(p)?),
            MessageKind::ConfigRequest => Message::ConfigRequest(decode_payload(p)?),
            MessageKind::ShardMapRequest => Message::ShardMapRequest(decode_payload(p)?),
            MessageKind::SubscribeRequest => Message::SubscribeRequest(decode_payload(p)?),
            MessageKind::ForwardRequest => Message::ForwardRequest(decode_payload(p)?),
            MessageKind::IngestReply => Message::IngestReply(decode_payload(p)?),
            MessageKind::ConfigReply => Message::ConfigReply(decode_payload(p)?),
            MessageKind::ShardMapReply => Message::ShardMapReply(decode_payload(p)?),
            MessageKind::PushNotice => Message::PushNotice(decode_payload(p)?),
            MessageKind::ForwardReply => Message::ForwardReply(decode_payload(p)?),
            MessageKind::ErrorReply => Message::ErrorReply(decode_payload(p)?),
        })
    }

    /// Decodes a buffer that must hold exactly one frame (an HTTPS body).
    pub fn from_bytes(buf: &[u8], cfg: &CodecConfig) -> Result<Message, DecodeError> {
        let frame = decode_single_frame(buf, cfg.max_payload)?;
        Message::decode(&frame, cfg)
    }
}

/// Decodes a frame's payload as `T`, checking that the frame is of the `expected` kind.
/// Useful when a peer knows which reply it awaits.
pub fn decode_expected<T: Decode>(
    frame: &Frame,
    expected: MessageKind,
    cfg: &CodecConfig,
) -> Result<T, DecodeError> {
    if frame.kind != expected.as_u8() {
        return Err(DecodeError::UnexpectedKind {
            expected,
            got: frame.kind,
        });
    }
    decode_payload(&frame.payload(cfg.max_payload)?)
}
