//! Error types of the protocol crate.

/// A frame or payload could not be decoded. Every decoder returns this on bad input;
/// none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a frame.
    #[error("truncated frame: need {needed} more bytes")]
    Truncated {
        /// Bytes still missing (at least).
        needed: usize,
    },
    /// The frame's declared length is over the receiver's maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Declared frame body length.
        len: usize,
        /// The receiver's maximum.
        max: usize,
    },
    /// The frame's declared length cannot even hold the header.
    #[error("frame length {0} is shorter than the frame header")]
    FrameTooShort(u32),
    /// Reserved flag bits were set.
    #[error("unsupported frame flags {0:#04x}")]
    UnsupportedFlags(u8),
    /// The frame kind is not known to this version.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame of one kind arrived where another was expected.
    #[error("expected a {expected:?} frame, got kind {got:#04x}")]
    UnexpectedKind {
        /// What the caller expected.
        expected: crate::MessageKind,
        /// What arrived.
        got: u8,
    },
    /// The compressed payload is corrupt.
    #[error("corrupt compressed payload: {0}")]
    Decompress(String),
    /// The payload (after decompression) is over the maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Declared or actual payload length.
        len: usize,
        /// The receiver's maximum.
        max: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("malformed payload: {0}")]
    Payload(String),
    /// Bytes followed the single frame that was expected.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// A message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer failed (cannot happen for well-formed messages).
    #[error("serialization failed: {0}")]
    Serialize(String),
    /// The encoded payload is over the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl DecodeError {
    /// The reply reason a server should give for this error.
    pub fn reject_reason(&self) -> crate::RejectReason {
        match self {
            DecodeError::FrameTooLarge { .. } | DecodeError::PayloadTooLarge { .. } => {
                crate::RejectReason::TooLarge
            }
            DecodeError::UnknownKind(_) | DecodeError::UnexpectedKind { .. } => {
                crate::RejectReason::UnsupportedMessage
            }
            _ => crate::RejectReason::Malformed,
        }
    }
}
