//! The protocol crate's integration suite (one test binary).

mod alias;
mod context;
mod no_panic;
mod oracle;
mod roundtrip;
mod routing;
mod spec;
mod strategies;
mod vectors;
mod view;
