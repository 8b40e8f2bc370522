//! An empty Rust shared library for bindings/scripts/size.sh (see Cargo.toml).

/// Keeps the library from being empty.
#[no_mangle]
pub extern "C" fn tern_size_reference(x: u32) -> u32 {
    x.wrapping_mul(3)
}
