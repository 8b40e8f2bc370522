#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod admin;
pub mod apps;
pub mod breaker;
mod coalesce;
pub mod config;
pub mod configcache;
pub mod controls;
pub mod dashboard;
pub mod drain;
pub mod features;
pub mod forward;
pub mod ingest;
pub mod latency;
pub mod lease;
pub mod listen;
pub mod ops;
pub mod pacer;
pub mod push;
pub mod ratelimit;
pub mod record;
pub mod replay;
pub mod run;
pub mod shardmap;
pub mod sharedbreaker;
pub mod spool;
pub mod tls;
pub mod token;
