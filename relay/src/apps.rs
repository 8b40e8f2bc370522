//! The app registry: which apps exist and which keys are valid for each. Every device
//! request is checked against it before anything else happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use tern_protocol::{AppId, Auth};

/// One app and its valid keys, as the backend's `GET /v1/apps` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AppEntry {
    /// The app.
    pub app_id: AppId,
    /// Its valid keys (several during a key rotation).
    pub keys: Vec<String>,
}

/// Why a registry could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request failed.
    #[error("fetching the app registry: {0}")]
    Fetch(String),
    /// The backend answered with an error status.
    #[error("the backend answered {0} for the app registry")]
    Status(u16),
    /// The body was not a registry.
    #[error("bad app registry: {0}")]
    Parse(String),
}

/// App id → valid keys.
type Keys = Arc<HashMap<AppId, Vec<String>>>;

/// The registry, shared by every request handler; replaced as a whole on refresh.
#[derive(Clone, Debug, Default)]
pub struct AppRegistry {
    apps: Arc<RwLock<Keys>>,
    loaded: Arc<AtomicBool>,
}

/// The result of checking credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// Known app, valid key.
    Ok,
    /// Unknown app or wrong key (not told apart, so keys cannot be probed per app).
    Denied,
}

impl AppRegistry {
    /// A registry holding `entries`.
    pub fn new(entries: Vec<AppEntry>) -> Self {
        let r = AppRegistry::default();
        r.replace(entries);
        r
    }

    /// Replaces the whole registry.
    pub fn replace(&self, entries: Vec<AppEntry>) {
        let map: HashMap<AppId, Vec<String>> =
            entries.into_iter().map(|e| (e.app_id, e.keys)).collect();
        metrics::gauge!("tern_relay_registry_apps").set(map.len() as f64);
        *self.apps.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        self.loaded.store(true, Ordering::Release);
    }

    /// True once a registry was installed (fetched or given). Before that, an unknown
    /// app may simply not be known *yet*: callers must not reject devices for it.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Keys {
        self.apps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// The registered apps.
    pub fn app_ids(&self) -> Vec<AppId> {
        self.snapshot().keys().cloned().collect()
    }

    /// True when no app is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a request's credentials. Key comparison takes the same time whatever
    /// the key's content.
    pub fn check(&self, auth: &Auth) -> AuthCheck {
        self.check_key(auth.app_id.as_str(), &auth.key)
    }

    /// [`AppRegistry::check`] on borrowed credentials (read in place from a request).
    pub fn check_key(&self, app_id: &str, key: &str) -> AuthCheck {
        let apps = self.snapshot();
        let Some(keys) = apps.get(app_id) else {
            return AuthCheck::Denied;
        };
        let mut ok = false;
        for k in keys {
            ok |= constant_time_eq::constant_time_eq(k.as_bytes(), key.as_bytes());
        }
        if ok {
            AuthCheck::Ok
        } else {
            AuthCheck::Denied
        }
    }

    /// Fetches the registry from the backend (`GET {base}/v1/apps`) and installs it.
    pub async fn refresh(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        token: Option<&str>,
    ) -> Result<usize, RegistryError> {
        let mut req = client.get(format!("{}/v1/apps", base_url.trim_end_matches('/')));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RegistryError::Fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Status(resp.status().as_u16()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| RegistryError::Fetch(e.to_string()))?;
        let entries: Vec<AppEntry> =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Parse(e.to_string()))?;
        let n = entries.len();
        self.replace(entries);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_keys_per_app() {
        let r = AppRegistry::new(vec![
            AppEntry {
                app_id: AppId::new("a"),
                keys: vec!["old".into(), "new".into()],
            },
            AppEntry {
                app_id: AppId::new("b"),
                keys: vec!["b-key".into()],
            },
        ]);
        let auth = |app: &str, key: &str| Auth {
            app_id: AppId::new(app),
            key: key.into(),
        };
        assert_eq!(r.check(&auth("a", "old")), AuthCheck::Ok);
        assert_eq!(r.check(&auth("a", "new")), AuthCheck::Ok);
        assert_eq!(
            r.check(&auth("a", "b-key")),
            AuthCheck::Denied,
            "keys are per app"
        );
        assert_eq!(r.check(&auth("a", "")), AuthCheck::Denied);
        assert_eq!(r.check(&auth("zzz", "old")), AuthCheck::Denied);
        r.replace(vec![]);
        assert_eq!(r.check(&auth("a", "old")), AuthCheck::Denied);
    }
}
