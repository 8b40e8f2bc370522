//! The reference for `footprint_lib`: an empty Rust shared library (std, allocator,
//! panic machinery) built with the same profile, so the SDK's own share is visible.

// `#[no_mangle]` counts as unsafe code: it is needed to export a C symbol.
#![allow(unsafe_code)]

/// Keeps the library from being empty.
#[no_mangle]
pub extern "C" fn tern_footprint_empty(x: u32) -> u32 {
    x.wrapping_mul(3)
}
