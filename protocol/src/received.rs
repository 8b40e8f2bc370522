//! Requests decoded into owned values, with what the size rules of docs/protocol.md §7
//! measure on the bytes as received: [`ReceivedIngest`] — the relay's path for
//! payloads the in-place reader ([`crate::IngestView`]) leaves to the owned decoder,
//! and the reference the in-place reader is tested against — and [`ReceivedForward`],
//! a backend's reading of the batches a relay forwards.

use crate::codec::decode_payload;
use crate::error::DecodeError;
use crate::event::Event;
use crate::limits::{validate_received_batch, Limits, ValidationError};
use crate::messages::{ForwardRequest, IngestRequest};
use crate::wire::{Decode, ReadError, ReadErrorKind, Reader};

/// An `IngestRequest` payload decoded by the owned decoder, with the batch's bytes as
/// received and the sizes of its events as received (§7).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedIngest<'a> {
    /// The decoded request.
    pub request: IngestRequest,
    /// The batch's MessagePack value exactly as received (what a relay forwards).
    pub batch_bytes: &'a [u8],
    /// Where [`ReceivedIngest::batch_bytes`] starts in the payload.
    pub batch_offset: usize,
    /// Each event's size as received: the length of its map in the payload.
    pub event_sizes: Vec<usize>,
}

impl<'a> ReceivedIngest<'a> {
    /// Decodes an `IngestRequest` payload (after decompression): exactly what
    /// [`decode_payload`] accepts, with the same errors.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let request: IngestRequest = decode_payload(payload)?;
        // The payload decoded, so this walk over the same bytes cannot fail.
        let (batch_offset, batch_len, event_sizes) =
            spans(payload).map_err(|e| DecodeError::Payload(e.to_string()))?;
        Ok(ReceivedIngest {
            request,
            batch_bytes: &payload[batch_offset..batch_offset + batch_len],
            batch_offset,
            event_sizes,
        })
    }

    /// The verdict of §7 on the batch, its sizes as received.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        validate_received_batch(&self.request.batch, &self.event_sizes, limits)
    }
}

/// Levels of nesting the walk below skips through. The payload decoded, so a value it
/// skips is a known field (at most a few levels of known structure) holding unknown
/// fields (at most the decoder's limit of nesting); this bound is above both.
const WALK_LEVELS: usize = crate::wire::MAX_SKIP_DEPTH + 16;

/// The batch's offset and length in an `IngestRequest` payload that decoded, and the
/// sizes of its events.
fn spans(payload: &[u8]) -> Result<(usize, usize, Vec<usize>), ReadError> {
    let mut r = Reader::new(payload);
    let n = r.map_len()?;
    let mut found = None;
    for _ in 0..n {
        if r.key()? == b"batch" {
            let start = r.position();
            let sizes = event_sizes(&mut r)?;
            found = Some((start, r.position() - start, sizes));
        } else {
            r.skip_within(WALK_LEVELS)?;
        }
    }
    found.ok_or_else(|| r.error(ReadErrorKind::MissingField("batch")))
}

fn event_sizes(r: &mut Reader<'_>) -> Result<Vec<usize>, ReadError> {
    let n = r.map_len()?;
    let mut sizes = Vec::new();
    for _ in 0..n {
        if r.key()? == b"events" {
            let count = r.array_len()?;
            sizes = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                let start = r.position();
                Event::decode(r)?;
                sizes.push(r.position() - start);
            }
        } else {
            r.skip_within(WALK_LEVELS)?;
        }
    }
    Ok(sizes)
}

/// A `ForwardRequest` payload decoded into owned values, with the sizes of each
/// batch's events as received (§5.7, §7): what a backend measures.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedForward {
    /// The decoded request.
    pub request: ForwardRequest,
    /// `event_sizes[i][j]`: the size of event `j` of batch `i`, as received.
    pub event_sizes: Vec<Vec<usize>>,
}

impl ReceivedForward {
    /// Decodes a `ForwardRequest` payload (after decompression): exactly what
    /// [`decode_payload`] accepts, with the same errors.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let request: ForwardRequest = decode_payload(payload)?;
        let event_sizes =
            forward_spans(payload).map_err(|e| DecodeError::Payload(e.to_string()))?;
        Ok(ReceivedForward {
            request,
            event_sizes,
        })
    }

    /// The verdict of §7 on batch `i`, its sizes as received.
    pub fn validate(&self, i: usize, limits: &Limits) -> Result<(), ValidationError> {
        let sizes = self.event_sizes.get(i).map_or(&[][..], Vec::as_slice);
        match self.request.batches.get(i) {
            Some(batch) => validate_received_batch(batch, sizes, limits),
            None => Ok(()),
        }
    }
}

fn forward_spans(payload: &[u8]) -> Result<Vec<Vec<usize>>, ReadError> {
    let mut r = Reader::new(payload);
    let n = r.map_len()?;
    let mut sizes = Vec::new();
    for _ in 0..n {
        if r.key()? == b"batches" {
            let count = r.array_len()?;
            sizes = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                sizes.push(event_sizes(&mut r)?);
            }
        } else {
            r.skip_within(WALK_LEVELS)?;
        }
    }
    Ok(sizes)
}
