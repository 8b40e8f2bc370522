# Sourced by size.sh, build-android.sh and build-ios.sh: how the shipped library's std
# is built (BENCHMARKS.md, "Bindings library size").
#
# std is rebuilt from source with the library (cargo's -Zbuild-std): compiled with the
# `mobile` profile (opt-level "z", fat LTO together with the library, panic = "unwind")
# and with std's `optimize_for_size` feature, and without std's `backtrace` feature
# (the symbolizer the panic hook uses for RUST_BACKTRACE; a stripped library has no
# symbols to show). Unwinding is kept: panic_unwind is built and the profile unwinds.
#
# -Zbuild-std is an unstable cargo feature: it is enabled on the stable toolchain with
# RUSTC_BOOTSTRAP=1, which these scripts set for their own cargo runs only (never for
# tests or the workspace's other builds). Needs the rust-src component (installed here
# when missing). TERN_BUILD_STD=0 builds with the prebuilt std instead (the figures
# without this lever; a toolchain that cannot rebuild std).
if [ "${TERN_BUILD_STD:-1}" = 1 ]; then
  if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src
  fi
  export RUSTC_BOOTSTRAP=1
  export CARGO_UNSTABLE_BUILD_STD=std,panic_unwind
  export CARGO_UNSTABLE_BUILD_STD_FEATURES=panic-unwind,optimize_for_size
  tern_std="std rebuilt (-Zbuild-std=std,panic_unwind, features panic-unwind,optimize_for_size)"
else
  tern_std="prebuilt std"
fi
