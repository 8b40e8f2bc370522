//! The protocol crate's integration suite (one test binary).

mod alias;
mod consent;
mod context;
mod no_panic;
mod oracle;
mod peers;
mod push;
mod roundtrip;
mod routing;
mod spec;
mod strategies;
mod vectors;
mod view;
