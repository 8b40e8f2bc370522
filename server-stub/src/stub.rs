//! The stub's shared state: the app registry with each app's published config
//! bundle, the store, the fault settings and the metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tern_protocol::{AppId, ConfigBundle, ETag};

use crate::config::{next_version, startup_decision, Content, Startup, StoredVersion, StubConfig};
use crate::error::{ConfigError, Error, Result};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// The file name of the SQLite database inside the data dir.
pub const DB_FILE: &str = "stub.sqlite3";

/// One published config bundle and its MessagePack encoding.
#[derive(Debug)]
pub struct Published {
    /// The bundle.
    pub bundle: ConfigBundle,
    /// `encode_payload(&bundle)`, computed once.
    pub msgpack: Bytes,
    /// The ETag of the config-file content this app was loaded with.
    pub file_etag: ETag,
}

impl Published {
    fn new(app_id: &AppId, version: u64, content: Content, file_etag: ETag) -> Result<Self> {
        let etag = content.etag();
        let bundle = ConfigBundle {
            app_id: app_id.clone(),
            version,
            etag,
            values: content.values,
            flags: content.flags,
            messages: content.messages,
        };
        let msgpack = Bytes::from(tern_protocol::encode_payload(&bundle)?);
        Ok(Published {
            bundle,
            msgpack,
            file_etag,
        })
    }

    /// The editable part of the bundle.
    pub fn content(&self) -> Content {
        Content {
            values: self.bundle.values.clone(),
            flags: self.bundle.flags.clone(),
            messages: self.bundle.messages.clone(),
        }
    }

    fn stored_version(&self) -> StoredVersion {
        StoredVersion {
            version: self.bundle.version,
            etag: self.bundle.etag.clone(),
            file_etag: self.file_etag.clone(),
        }
    }
}

/// One registered app.
#[derive(Debug)]
pub struct App {
    /// The app's keys.
    pub keys: Vec<String>,
    published: RwLock<Arc<Published>>,
}

impl App {
    /// The bundle currently served.
    pub fn published(&self) -> Arc<Published> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The state shared by every request handler.
#[derive(Debug)]
pub struct Stub {
    pub(crate) store: Store,
    pub(crate) apps: BTreeMap<AppId, App>,
    pub(crate) ingest_token: Option<String>,
    pub(crate) faults: RwLock<Faults>,
    pub(crate) metrics: Metrics,
    /// Serializes admin config changes (read-modify-write of one bundle).
    pub(crate) admin_lock: tokio::sync::Mutex<()>,
    /// What `GET /v1/apps` answers instead of the apps file (`PUT /admin/registry`):
    /// an empty list, rotated keys, whatever a test needs a backend to say.
    pub(crate) registry_override: RwLock<Option<Vec<RegistryEntry>>>,
}

/// One app and its keys as `GET /v1/apps` lists them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The app.
    pub app_id: String,
    /// Its keys.
    pub keys: Vec<String>,
}

impl Stub {
    /// Opens the data dir (creating it), loads the stored state, reconciles each app's
    /// config with `config` (see [`crate::config::startup_decision`]), and starts the
    /// store's writer thread.
    pub fn open(config: StubConfig, data_dir: &Path) -> Result<Arc<Stub>> {
        config.validate()?;
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            what: format!("creating data dir {}", data_dir.display()),
            source,
        })?;
        let conn = store::open_connection(&data_dir.join(DB_FILE))?;
        let mut apps = BTreeMap::new();
        for app in &config.apps {
            let file_content = app.content();
            let file_etag = file_content.etag();
            let stored = store::load_config(&conn, app.id.as_str())?;
            let published = match startup_decision(stored.as_ref().map(|(s, _)| s), &file_etag) {
                Startup::KeepStored => {
                    let (s, json) = stored.expect("KeepStored implies a stored config");
                    match serde_json::from_str::<Content>(&json) {
                        Ok(content) => Published::new(&app.id, s.version, content, file_etag)?,
                        Err(e) => {
                            tracing::warn!(app = %app.id, error = %e, "stored config unreadable; using the file");
                            Published::new(&app.id, s.version + 1, file_content, file_etag)?
                        }
                    }
                }
                Startup::File { version } => {
                    Published::new(&app.id, version, file_content, file_etag)?
                }
            };
            store::save_config(
                &conn,
                app.id.as_str(),
                &published.stored_version(),
                &published.content(),
            )?;
            tracing::info!(app = %app.id, version = published.bundle.version, etag = %published.bundle.etag, "app config loaded");
            apps.insert(
                app.id.clone(),
                App {
                    keys: app.keys.clone(),
                    published: RwLock::new(Arc::new(published)),
                },
            );
        }
        Ok(Arc::new(Stub {
            store: Store::spawn(conn)?,
            apps,
            ingest_token: config.ingest_token,
            faults: RwLock::new(Faults::default()),
            metrics: Metrics::new(),
            admin_lock: tokio::sync::Mutex::new(()),
            registry_override: RwLock::new(None),
        }))
    }

    /// The registered app, if any.
    pub fn app(&self, app_id: &str) -> Option<&App> {
        self.apps.get(&AppId::new(app_id))
    }

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// What `GET /v1/apps` answers: the override if one is set, else the apps of the
    /// apps file with their keys.
    pub fn registry(&self) -> Vec<RegistryEntry> {
        if let Some(o) = self
            .registry_override
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return o;
        }
        self.apps
            .iter()
            .map(|(id, app)| RegistryEntry {
                app_id: id.as_str().to_owned(),
                keys: app.keys.clone(),
            })
            .collect()
    }

    /// Makes `GET /v1/apps` answer `entries` (`None`: the apps file again). Only the
    /// registry changes; ingest and config still know the apps of the file.
    pub fn set_registry(&self, entries: Option<Vec<RegistryEntry>>) {
        *self
            .registry_override
            .write()
            .unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies an admin edit to one app's content: validates the result, bumps the
    /// version only when the content changed, persists, then publishes. Returns the
    /// bundle now served, or `None` for an unknown app.
    pub async fn edit_config<F>(
        &self,
        app_id: &str,
        edit: F,
    ) -> Result<Option<Arc<Published>>, EditError>
    where
        F: FnOnce(&mut Content) -> Result<(), EditError>,
    {
        let Some(app) = self.app(app_id) else {
            return Ok(None);
        };
        let _guard = self.admin_lock.lock().await;
        let current = app.published();
        let mut content = current.content();
        edit(&mut content)?;
        content.validate().map_err(EditError::Invalid)?;
        let etag = content.etag();
        if etag == current.bundle.etag {
            return Ok(Some(current));
        }
        let version = next_version(current.bundle.version, &current.bundle.etag, &etag);
        let published = Arc::new(Published::new(
            &current.bundle.app_id,
            version,
            content,
            current.file_etag.clone(),
        )?);
        let (id, sv, c) = (
            app_id.to_owned(),
            published.stored_version(),
            published.content(),
        );
        self.store
            .call(move |conn| store::save_config(conn, &id, &sv, &c))
            .await?;
        *app.published.write().unwrap_or_else(|e| e.into_inner()) = published.clone();
        tracing::info!(app = app_id, version, "app config changed by admin");
        Ok(Some(published))
    }
}

/// Why an admin config edit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The edited content breaks a rule.
    #[error(transparent)]
    Invalid(ConfigError),
    /// The thing to delete does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Persisting failed.
    #[error(transparent)]
    Internal(#[from] Error),
}
