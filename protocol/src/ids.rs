//! Typed identifiers. Each is a newtype so an `AppId` can never be passed where a
//! `UserId` is expected. Construction is infallible; the rules on length and
//! characters are enforced by [`crate::limits`] so that a violation becomes a typed
//! validation error (and a `Rejected` reply) instead of an opaque decode failure.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string. Validity is checked by [`crate::limits`].
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the id and returns the inner string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl $crate::wire::Encode for $name {
            fn encode(&self, w: &mut $crate::wire::Writer) {
                w.str(&self.0);
            }
        }

        impl $crate::wire::Decode for $name {
            fn decode(
                r: &mut $crate::wire::Reader<'_>,
            ) -> Result<Self, $crate::wire::ReadError> {
                r.str().map(|s| Self(s.to_owned()))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Hashes and compares like the string, so maps keyed by the id can be
        /// queried with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// Builds the id from its 16 raw bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }

            /// The inner UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// Parses the canonical hyphenated (or simple hex) text form.
            pub fn parse(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl $crate::wire::Encode for $name {
            fn encode(&self, w: &mut $crate::wire::Writer) {
                $crate::wire::Encode::encode(&self.0, w);
            }
        }

        impl $crate::wire::Decode for $name {
            fn decode(
                r: &mut $crate::wire::Reader<'_>,
            ) -> Result<Self, $crate::wire::ReadError> {
                <Uuid as $crate::wire::Decode>::decode(r).map(Self)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// An application registered with Tern. Scopes keys, config and data.
    AppId
);
string_id!(
    /// The app's own identifier for a user (set by `identify`). Anonymous events
    /// carry no user id and are routed by their device id.
    UserId
);
string_id!(
    /// A relay node in the shard map.
    RelayId
);

uuid_id!(
    /// The identifier of one installation of the SDK on one device; random v4,
    /// created once and kept in the device store.
    DeviceId
);
uuid_id!(
    /// The identifier of one batch of events, fixed on the device when the batch is
    /// formed and stable across every retry and restart. The backend deduplicates on it.
    BatchId
);

uuid_id!(
    /// The anonymous identity events of a device are recorded under while no user is
    /// identified: random v4, kept in the device store, replaced by `reset` (and by
    /// `delete_local_data`). Unlike the [`DeviceId`] it is not the store's identity: a
    /// reset changes it and keeps the device id and its sequence numbers.
    AnonymousId
);

impl AnonymousId {
    /// A fresh random anonymous id (UUID v4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

uuid_id!(
    /// One installation of an app on a device: random v4, chosen when the store is
    /// created and kept across app updates; replaced by `delete_local_data` (with the
    /// device id). Carried in the batch-level `context` (protocol §5.2.1).
    InstallId
);

impl InstallId {
    /// A fresh random install id (UUID v4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl DeviceId {
    /// A fresh random device id (UUID v4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl BatchId {
    /// A fresh batch id: UUID v7, so ids sort roughly by creation time.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

/// A session, numbered by the device. Sessions are opaque to the relay.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl crate::wire::Encode for SessionId {
    fn encode(&self, w: &mut crate::wire::Writer) {
        w.uint(self.0);
    }
}

impl crate::wire::Decode for SessionId {
    fn decode(r: &mut crate::wire::Reader<'_>) -> Result<Self, crate::wire::ReadError> {
        <u64 as crate::wire::Decode>::decode(r).map(SessionId)
    }
}
