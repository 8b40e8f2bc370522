//! The uniffi binding generator, pinned to the workspace's uniffi version:
//! `cargo run -p tern-bindings --features cli --bin uniffi-bindgen -- generate ...`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
