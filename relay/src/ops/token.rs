//! Random tokens (admin bearer token, recording salt) and the admin token file.
//!
//! The randomness itself is the crate's leaf `random_token`, which the recorder (on
//! the data path) also uses for its salt.

use std::io::Write;
use std::path::Path;

/// Generates a random token (32 bytes, hex).
pub fn generate_token() -> String {
    crate::random_token()
}

/// Why the admin token file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The path is a symbolic link: the token would land wherever it points.
    #[error(
        "admin token file {0} is a symbolic link: refusing to write the admin token \
         through it (remove the link, or set admin_token / TERN_RELAY_ADMIN_TOKEN)"
    )]
    Symlink(String),
    /// The path exists and is not a regular file.
    #[error("admin token file {0} exists and is not a regular file")]
    NotAFile(String),
    /// An I/O step failed.
    #[error("admin token file: {what}: {source}")]
    Io {
        /// The step and the file.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> TokenFileError {
    move |source| TokenFileError::Io { what, source }
}

/// Writes a generated admin token, readable by the owner only.
///
/// The file is written whole to a new temporary file (created `0600`, never through a
/// symbolic link) and renamed over `path`, so a reader holding the old file never sees
/// the new token and an old file's looser mode is not kept (the log says so). A
/// symbolic link at `path` is refused: the token would land wherever it points.
pub fn write_token_file(path: &Path, token: &str) -> Result<(), TokenFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(TokenFileError::Symlink(path.display().to_string()))
        }
        Ok(meta) if !meta.is_file() => {
            return Err(TokenFileError::NotAFile(path.display().to_string()))
        }
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{mode:04o}"),
                        "the existing admin token file was readable by others: replaced by a 0600 file"
                    );
                }
            }
            #[cfg(not(unix))]
            let _ = meta;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path.display().to_string())(e)),
    }
    let tmp = path.with_extension("token.tmp");
    // A leftover from an interrupted start (never followed if it is a link).
    match std::fs::symlink_metadata(&tmp) {
        Ok(_) => {
            std::fs::remove_file(&tmp).map_err(io(format!("removing a stale {}", tmp.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(tmp.display().to_string())(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = options.open(&tmp).map_err(io(tmp.display().to_string()))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing the admin token to {}", tmp.display())))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .map_err(io(format!("moving the admin token to {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let t = generate_token();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(t, generate_token());
    }
}
