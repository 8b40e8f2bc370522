#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod apps;
pub mod forward;
pub mod ingest;
