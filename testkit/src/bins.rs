//! Where the stack's binaries are, and (for tests) building them first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{io_err, Error, Result};

/// The binaries the stack runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `tern-server-stub`.
    pub stub: PathBuf,
    /// `tern-relay`.
    pub relay: PathBuf,
    /// `tern-fleet` (device processes).
    pub fleet: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, checked to exist.
    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let get = |name: &str| {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::MissingBinary {
                    what: name.to_owned(),
                    path: path.display().to_string(),
                })
            }
        };
        Ok(Binaries {
            stub: get("tern-server-stub")?,
            relay: get("tern-relay")?,
            fleet: get("tern-fleet")?,
        })
    }

    /// Next to the running executable (the `tern-fleet` binary), or in `TERN_BIN_DIR`.
    pub fn beside_current_exe() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("TERN_BIN_DIR") {
            return Binaries::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe().map_err(io_err("locating the executable"))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        Binaries::in_dir(dir)
    }

    /// For tests: builds the three binaries (debug profile) with the cargo that runs the
    /// tests, once per process, and returns them. A test never runs a stale binary.
    pub fn build_for_tests() -> Result<Binaries> {
        static BUILT: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
        BUILT
            .get_or_init(|| build(false).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Build)
    }

    /// [`Binaries::build_for_tests`] with the release profile: for scenarios at fleet
    /// scale, where a debug build's SQLite and crypto would measure the compiler's
    /// settings, not the design (the same build `scripts/run.sh` makes).
    pub fn build_release_for_tests() -> Result<Binaries> {
        static BUILT: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
        BUILT
            .get_or_init(|| build(true).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Build)
    }
}

fn build(release: bool) -> Result<Binaries> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--bins", "--locked", "--manifest-path"])
        .arg(&manifest)
        .args([
            "-p",
            "tern-relay",
            "-p",
            "tern-server-stub",
            "-p",
            "tern-fleet",
        ])
        .args(release.then_some("--release"))
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::inherit());
    let out = cmd.output().map_err(|source| Error::Spawn {
        what: "cargo build".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "cargo build exited with {}",
            out.status
        )));
    }
    // The executables cargo reports are the truth (target dir, profile, suffix).
    let mut found = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            if let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
            {
                found.insert(name.to_owned(), PathBuf::from(exe));
            }
        }
    }
    let take = |name: &str| {
        found
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Build(format!("cargo did not report the {name} executable")))
    };
    Ok(Binaries {
        stub: take("tern-server-stub")?,
        relay: take("tern-relay")?,
        fleet: take("tern-fleet")?,
    })
}
