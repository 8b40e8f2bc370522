#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod schedule;
pub mod session;
