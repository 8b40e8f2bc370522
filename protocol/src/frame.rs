//! Length-prefixed framing for QUIC streams and HTTPS bodies.
//!
//! ```text
//! +----------------+--------+---------+------------------------+
//! | length: u32 BE | kind:u8| flags:u8| body: length - 2 bytes |
//! +----------------+--------+---------+------------------------+
//! ```
//!
//! `length` counts the kind byte, the flags byte and the body. Flag bit 0 means the
//! body is `uncompressed_len: u32 LE` followed by an LZ4 block; every other flag bit is
//! reserved and must be zero. The receiver bounds both the frame length and the
//! decompressed length before allocating anything.

use std::borrow::Cow;

use crate::error::DecodeError;

/// Bytes in the frame header before the body: length (4), kind (1), flags (1).
pub const HEADER_LEN: usize = 6;
/// Flag bit: the body is LZ4-compressed with a prepended little-endian length.
pub const FLAG_LZ4: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_LZ4;

/// One frame as it came off the wire: kind, flags and the (possibly compressed) body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message kind byte (not yet checked against known kinds).
    pub kind: u8,
    /// The flags byte (checked: only known bits are set).
    pub flags: u8,
    /// The body as sent.
    pub body: Vec<u8>,
}

impl Frame {
    /// The payload: the body, decompressed if the frame is compressed. Fails if the
    /// declared or actual decompressed length is over `max_payload`.
    pub fn payload(&self, max_payload: usize) -> Result<Cow<'_, [u8]>, DecodeError> {
        payload_of(self.flags, &self.body, max_payload)
    }

    /// Total encoded size of this frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// A frame that borrows its body from the buffer it was read from (see
/// [`decode_single_frame_ref`]): what [`Frame`] is, without copying the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The message kind byte (not yet checked against known kinds).
    pub kind: u8,
    /// The flags byte (checked: only known bits are set).
    pub flags: u8,
    /// The body as sent.
    pub body: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The payload, exactly as [`Frame::payload`] gives it: borrowed when the frame
    /// is not compressed.
    pub fn payload(&self, max_payload: usize) -> Result<Cow<'a, [u8]>, DecodeError> {
        payload_of(self.flags, self.body, max_payload)
    }
}

fn payload_of(flags: u8, body: &[u8], max_payload: usize) -> Result<Cow<'_, [u8]>, DecodeError> {
    if flags & FLAG_LZ4 == 0 {
        if body.len() > max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: body.len(),
                max: max_payload,
            });
        }
        return Ok(Cow::Borrowed(body));
    }
    decompress(body, max_payload).map(Cow::Owned)
}

fn decompress(body: &[u8], max_payload: usize) -> Result<Vec<u8>, DecodeError> {
    let Some((len_bytes, block)) = body.split_first_chunk::<4>() else {
        return Err(DecodeError::Decompress(
            "compressed body shorter than its length prefix".into(),
        ));
    };
    let declared = u32::from_le_bytes(*len_bytes) as usize;
    if declared > max_payload {
        return Err(DecodeError::PayloadTooLarge {
            len: declared,
            max: max_payload,
        });
    }
    let out = lz4_flex::block::decompress(block, declared)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if out.len() != declared {
        return Err(DecodeError::Decompress(format!(
            "decompressed {} bytes, header declared {declared}",
            out.len()
        )));
    }
    Ok(out)
}

/// Writes a frame around `payload`, compressing it with LZ4 when it is at least
/// `compress_threshold` bytes long and compression makes it smaller.
pub fn encode_frame(kind: u8, payload: &[u8], compress_threshold: usize) -> Vec<u8> {
    if payload.len() >= compress_threshold {
        // Compressed straight into the frame: no intermediate buffer to copy from.
        let start = HEADER_LEN + 4;
        let mut out = vec![0u8; start + lz4_flex::block::get_maximum_output_size(payload.len())];
        if let Ok(n) = lz4_flex::block::compress_into(payload, &mut out[start..]) {
            let body = 4 + n;
            if body < payload.len() {
                let len = u32::try_from(body + 2).expect("frame body over 4 GiB");
                out[..4].copy_from_slice(&len.to_be_bytes());
                out[4] = kind;
                out[5] = FLAG_LZ4;
                let declared = u32::try_from(payload.len()).expect("payload over 4 GiB");
                out[HEADER_LEN..start].copy_from_slice(&declared.to_le_bytes());
                out.truncate(start + n);
                return out;
            }
        }
    }
    assemble(kind, 0, payload)
}

fn assemble(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 2).expect("frame body over 4 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(body);
    out
}

/// Parses the header at the start of `buf`: `Ok(None)` if fewer than
/// [`HEADER_LEN`] bytes are present, otherwise the body length after checks.
fn parse_header(buf: &[u8], max_body: usize) -> Result<Option<(u8, u8, usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len < 2 {
        return Err(DecodeError::FrameTooShort(len));
    }
    let body_len = len as usize - 2;
    if body_len > max_body {
        return Err(DecodeError::FrameTooLarge {
            len: body_len,
            max: max_body,
        });
    }
    let (kind, flags) = (header[4], header[5]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnsupportedFlags(flags));
    }
    Ok(Some((kind, flags, body_len)))
}

/// The largest frame body accepted for a payload limit: a compressed body carries a
/// 4-byte length prefix and LZ4 can expand incompressible input slightly.
pub fn max_body_for_payload(max_payload: usize) -> usize {
    max_payload + 4 + max_payload / 255 + 16
}

/// Decodes one frame from the start of `buf`. Returns `Ok(None)` when more bytes are
/// needed, or the frame and the number of bytes it used.
pub fn decode_frame(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some((kind, flags, body_len)) = parse_header(buf, max_body_for_payload(max_payload))?
    else {
        return Ok(None);
    };
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Frame {
        kind,
        flags,
        body: buf[HEADER_LEN..total].to_vec(),
    };
    Ok(Some((frame, total)))
}

/// Decodes exactly one frame that must fill `buf` completely (an HTTPS body, or a
/// QUIC stream read to its end).
pub fn decode_single_frame(buf: &[u8], max_payload: usize) -> Result<Frame, DecodeError> {
    match decode_frame(buf, max_payload)? {
        Some((frame, used)) if used == buf.len() => Ok(frame),
        Some((_, used)) => Err(DecodeError::TrailingBytes(buf.len() - used)),
        None => {
            let needed = match parse_header(buf, usize::MAX)? {
                Some((_, _, body_len)) => HEADER_LEN + body_len - buf.len(),
                None => HEADER_LEN - buf.len(),
            };
            Err(DecodeError::Truncated { needed })
        }
    }
}

/// [`decode_single_frame`] without copying the body: the same checks, the same
/// errors, and a [`FrameRef`] borrowing from `buf`.
pub fn decode_single_frame_ref(
    buf: &[u8],
    max_payload: usize,
) -> Result<FrameRef<'_>, DecodeError> {
    let Some((kind, flags, body_len)) = parse_header(buf, max_body_for_payload(max_payload))?
    else {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let total = HEADER_LEN + body_len;
    match buf.len().cmp(&total) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated {
            needed: total - buf.len(),
        }),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes(buf.len() - total)),
        std::cmp::Ordering::Equal => Ok(FrameRef {
            kind,
            flags,
            body: &buf[HEADER_LEN..],
        }),
    }
}

/// Incremental frame decoder for a byte stream (sans-IO): feed bytes as they arrive
/// with [`FrameDecoder::push`], take complete frames with [`FrameDecoder::next_frame`].
///
/// After an error the stream is out of sync: the caller must close it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_payload: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose payload could exceed `max_payload`.
    pub fn new(max_payload: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_payload,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        match decode_frame(&self.buf[self.start..], self.max_payload)? {
            Some((frame, used)) => {
                self.start += used;
                if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}
