//! What the relay serves to devices besides acknowledgements: each app's config bundle
//! (remote values, flags, in-app messages), the push hub that streams its changes, and the
//! shard map.

pub mod cache;
pub mod push;
pub mod reload;
pub mod shardmap;
