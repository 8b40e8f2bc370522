#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub mod ingest;
pub mod listen;
pub mod ops;
mod periodic;
pub mod policy;
pub mod private;
pub mod remote;
pub mod run;
pub mod spool;

/// A random token: 32 bytes from the OS-seeded generator, hex (admin bearer tokens,
/// recording salts).
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
