//! Serving the shard map file: [`reload`] installs a valid, newer file as the
//! [`ServedShardMap`]; [`watch`] reloads it when it changes or on SIGHUP. The file's checks and
//! the refusal record are [`crate::remote::shardmap`]'s.

use std::path::{Path, PathBuf};

use crate::remote::shardmap::{read, ServedShardMap, ShardMapFileError, CHECK_EVERY};

/// Reads the file at `path` and serves it as `served` if it is valid and newer;
/// otherwise records why not. Returns the version installed, if any.
pub fn reload(path: &Path, served: &ServedShardMap) -> Option<u64> {
    let status = served.status();
    let map = match read(path) {
        Ok(map) => map,
        Err(e) => {
            status.note_refused(None, e.kind(), e.to_string());
            return None;
        }
    };
    let current = served.current();
    if map.version <= current.version {
        let same_content = map == *current;
        if same_content {
            // The file was touched or rewritten unchanged: nothing to do.
            return None;
        }
        let e = ShardMapFileError::NotNewer {
            path: path.display().to_string(),
            version: map.version,
            served: current.version,
            same_content,
        };
        status.note_refused(Some(map.version), e.kind(), e.to_string());
        return None;
    }
    let version = map.version;
    match served.install(map) {
        Ok(true) => {
            tracing::info!(version, "shard map reloaded");
            Some(version)
        }
        // Another reload won the race; nothing to report.
        Ok(false) => None,
        Err(e) => {
            status.note_refused(Some(version), e.kind(), e.to_string());
            None
        }
    }
}

/// Reloads the shard map file when it changes (checked every 2 s) or on SIGHUP.
/// A file that fails is refused with its reason and the current map kept.
pub async fn watch(path: PathBuf, served: ServedShardMap) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let tick = tokio::time::sleep(CHECK_EVERY);
        #[cfg(unix)]
        let signalled = match hup.as_mut() {
            Some(h) => tokio::select! { _ = tick => false, _ = h.recv() => true },
            None => {
                tick.await;
                false
            }
        };
        #[cfg(not(unix))]
        let signalled = {
            tick.await;
            false
        };
        let now = modified(&path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        reload(&path, &served);
    }
}
