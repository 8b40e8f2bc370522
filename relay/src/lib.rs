#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod breaker;
pub mod pacer;
pub mod ratelimit;
