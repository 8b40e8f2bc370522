//! Directories only the relay's user may enter.
//!
//! The spool holds devices' events (user ids, properties) and the config cache holds
//! what the backend serves apps; neither is for other local users. Files inside are
//! written with the process umask (`object_store` and the cache do not choose a mode),
//! so the directory itself is made `0700`: nobody else can reach what is in it,
//! whatever the files' own modes. A directory that was more open is narrowed, with a
//! warning naming it.

use std::path::Path;

/// Creates `dir` (and missing parents) with mode `0700`, or narrows an existing `dir`
/// to `0700` if group or others had any access. Returns whether it narrowed one.
#[cfg(unix)]
pub fn private_dir(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | 0o700))?;
    tracing::warn!(
        dir = %dir.display(),
        was = format!("{:o}", mode & 0o777),
        "directory was open to other users: made 0700"
    );
    Ok(true)
}

/// Creates `dir` (and missing parents).
#[cfg(not(unix))]
pub fn private_dir(dir: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir).map(|()| false)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_is_0700_and_an_open_one_is_narrowed_once() {
        let root = tempfile::tempdir().unwrap();
        let new = root.path().join("a/b");
        assert!(!private_dir(&new).unwrap());
        assert_eq!(mode(&new), 0o700);

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(open.join("f"), b"x").unwrap();
        assert!(private_dir(&open).unwrap());
        assert_eq!(mode(&open), 0o700);
        assert!(
            !private_dir(&open).unwrap(),
            "nothing to narrow the second time"
        );
        assert_eq!(
            std::fs::read(open.join("f")).unwrap(),
            b"x",
            "contents kept"
        );
    }
}
