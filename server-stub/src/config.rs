//! The stub's config file (apps, their keys and their config content), its
//! validation, and the content-derived ETag / monotonic version rules.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tern_protocol::limits::{validate_id, validate_value, Limits};
use tern_protocol::rollout::BUCKETS;
use tern_protocol::{AppId, ETag, FeatureFlag, InAppMessage, Value};

use crate::error::ConfigError;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StubConfig {
    /// When set, every `/v1/*` request must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub ingest_token: Option<String>,
    /// The registered apps.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// One app of the config file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app id.
    pub id: AppId,
    /// The app's keys (at least one); the relay checks device credentials against them.
    pub keys: Vec<String>,
    /// Remote config values.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Feature flags.
    #[serde(default)]
    pub flags: Vec<FeatureFlag>,
    /// In-app messages.
    #[serde(default)]
    pub messages: Vec<InAppMessage>,
}

impl AppConfig {
    /// The app's config content (values, flags, messages).
    pub fn content(&self) -> Content {
        Content {
            values: self.values.clone(),
            flags: self.flags.clone(),
            messages: self.messages.clone(),
        }
    }
}

/// The part of a config bundle that an operator edits: values, flags and messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    /// Remote config values.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Feature flags.
    #[serde(default)]
    pub flags: Vec<FeatureFlag>,
    /// In-app messages.
    #[serde(default)]
    pub messages: Vec<InAppMessage>,
}

impl StubConfig {
    /// Reads and validates a config file. Errors name the file and the field at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse {
                path: path.to_owned(),
                reason,
            },
            other => other.in_file(path),
        })
    }

    /// Parses and validates config text (no file name in errors).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: StubConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: Default::default(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the semantic rules: unique app ids, non-empty key lists, valid content.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = Limits::default();
        if let Some(token) = &self.ingest_token {
            if token.is_empty() {
                return Err(ConfigError::invalid(
                    "ingest_token",
                    "is empty (omit it to disable auth)",
                ));
            }
        }
        let mut ids = Unique::named("app id");
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{i}]");
            validate_id("id", app.id.as_str(), &limits)
                .map_err(|e| ConfigError::invalid(format!("{at}.id"), e.to_string()))?;
            ids.check(format!("{at}.id"), app.id.as_str())?;
            if app.keys.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{at}.keys"),
                    "is empty: an app needs at least one key",
                ));
            }
            let mut keys = Unique::secret("key");
            for (k, key) in app.keys.iter().enumerate() {
                keys.check(format!("{at}.keys[{k}]"), key)?;
            }
            app.content()
                .validate()
                .map_err(|e| e.prefixed(&format!("{at}.")))?;
        }
        Ok(())
    }
}

/// The names of one list's items (app ids, keys, flag keys, message and action ids,
/// variant keys): none empty, none twice.
struct Unique<'a> {
    seen: HashSet<&'a str>,
    what: &'static str,
    /// The names are secrets (app keys): a refusal does not repeat them.
    secret: bool,
}

impl<'a> Unique<'a> {
    fn named(what: &'static str) -> Self {
        Unique {
            seen: HashSet::new(),
            what,
            secret: false,
        }
    }

    fn secret(what: &'static str) -> Self {
        Unique {
            secret: true,
            ..Unique::named(what)
        }
    }

    /// Refuses `name` (the item at `path`) when it is empty or was seen before.
    fn check(&mut self, path: String, name: &'a str) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::invalid(path, "is empty"));
        }
        if !self.seen.insert(name) {
            let why = if self.secret {
                format!("duplicate {}", self.what)
            } else {
                format!("duplicate {} {name:?}", self.what)
            };
            return Err(ConfigError::invalid(path, why));
        }
        Ok(())
    }
}

impl Content {
    /// Checks values, flags and messages. Field paths are relative (`flags[1].key`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = Limits::default();
        for (key, value) in &self.values {
            validate_value_entry(key, value, &limits)?;
        }
        let mut flag_keys = Unique::named("flag key");
        for (i, flag) in self.flags.iter().enumerate() {
            validate_flag(flag).map_err(|e| e.prefixed(&format!("flags[{i}].")))?;
            flag_keys.check(format!("flags[{i}].key"), &flag.key)?;
        }
        let mut message_ids = Unique::named("message id");
        for (i, msg) in self.messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            validate_id("id", &msg.id, &limits)
                .map_err(|e| ConfigError::invalid(format!("{at}.id"), e.to_string()))?;
            message_ids.check(format!("{at}.id"), &msg.id)?;
            if let Some(bp) = msg.targeting.rollout_bp {
                check_bp(&format!("{at}.targeting.rollout_bp"), bp)?;
            }
            if let (Some(start), Some(end)) = (msg.starts_at_ms, msg.ends_at_ms) {
                if end < start {
                    return Err(ConfigError::invalid(
                        format!("{at}.ends_at_ms"),
                        format!("{end} is before starts_at_ms {start}"),
                    ));
                }
            }
            let mut action_ids = Unique::named("action id");
            for (a, action) in msg.actions.iter().enumerate() {
                action_ids.check(format!("{at}.actions[{a}].id"), &action.id)?;
            }
        }
        Ok(())
    }

    /// The content-derived ETag: hex of xxh3-128 over the MessagePack encoding of
    /// `(values, flags, messages)`. Equal content gives equal tags, across restarts.
    pub fn etag(&self) -> ETag {
        use tern_protocol::Encode;
        // A 3-item array, as serde encodes the tuple (tags are unchanged from earlier
        // versions).
        let mut w = tern_protocol::wire::Writer::new();
        w.array(3);
        self.values.encode(&mut w);
        self.flags.encode(&mut w);
        self.messages.encode(&mut w);
        let bytes = w.into_bytes();
        ETag(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)))
    }
}

/// Checks one remote-config value entry.
pub(crate) fn validate_value_entry(
    key: &str,
    value: &Value,
    limits: &Limits,
) -> Result<(), ConfigError> {
    let field = format!("values.{key}");
    if key.is_empty() {
        return Err(ConfigError::invalid("values", "has an empty key"));
    }
    if key.len() > limits.max_name_len {
        return Err(ConfigError::invalid(
            field,
            format!(
                "key is {} bytes, over the limit of {}",
                key.len(),
                limits.max_name_len
            ),
        ));
    }
    validate_value(key, value, limits).map_err(|e| ConfigError::invalid(field, e.to_string()))
}

fn check_bp(field: &str, bp: u32) -> Result<(), ConfigError> {
    if bp > BUCKETS {
        return Err(ConfigError::invalid(
            field,
            format!("{bp} is over {BUCKETS}"),
        ));
    }
    Ok(())
}

/// Checks one flag (field paths relative to the flag).
pub(crate) fn validate_flag(flag: &FeatureFlag) -> Result<(), ConfigError> {
    if flag.key.is_empty() {
        return Err(ConfigError::invalid("key", "is empty"));
    }
    if flag.key.chars().any(|c| c.is_control() || c == '/') {
        return Err(ConfigError::invalid(
            "key",
            "has a control character or '/'",
        ));
    }
    check_bp("rollout_bp", flag.rollout_bp)?;
    if let Some(salt) = &flag.salt {
        if salt.is_empty() {
            return Err(ConfigError::invalid(
                "salt",
                "is empty (omit it to use the key)",
            ));
        }
    }
    let mut keys = Unique::named("variant key");
    for (v, variant) in flag.variants.iter().enumerate() {
        keys.check(format!("variants[{v}].key"), &variant.key)?;
        if let Some(value) = &variant.value {
            validate_value(&variant.key, value, &Limits::default())
                .map_err(|e| ConfigError::invalid(format!("variants[{v}].value"), e.to_string()))?;
        }
    }
    if !flag.variants.is_empty() && flag.variants.iter().all(|v| v.weight == 0) {
        return Err(ConfigError::invalid(
            "variants",
            "all weights are 0: the flag could never be on",
        ));
    }
    Ok(())
}

/// What the store remembers about an app's config between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    /// The version last served.
    pub version: u64,
    /// The ETag of the content last served (possibly changed through the admin API).
    pub etag: ETag,
    /// The ETag of the config-file content last loaded at startup.
    pub file_etag: ETag,
}

/// What to serve at startup, decided by [`startup_decision`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// Serve the file's content with this version.
    File {
        /// The version.
        version: u64,
    },
    /// The file did not change since the last run: keep serving the stored content
    /// (which may carry admin changes) at the stored version.
    KeepStored,
}

/// The version rule at startup.
///
/// * First run: the file's content, version 1.
/// * The file is unchanged since the last run: keep what was served (admin changes
///   survive a restart) and its version.
/// * The file changed: the file wins. Its version is the stored one when the content
///   equals what was served, else the stored one + 1 — versions never go back.
pub fn startup_decision(stored: Option<&StoredVersion>, file_etag: &ETag) -> Startup {
    match stored {
        None => Startup::File { version: 1 },
        Some(s) if &s.file_etag == file_etag => Startup::KeepStored,
        Some(s) if &s.etag == file_etag => Startup::File { version: s.version },
        Some(s) => Startup::File {
            version: s.version + 1,
        },
    }
}

/// The version rule for an admin change: bump only when the content changes.
pub fn next_version(current_version: u64, current: &ETag, new: &ETag) -> u64 {
    if current == new {
        current_version
    } else {
        current_version + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../demo/apps.toml");

    fn err_text(text: &str) -> String {
        StubConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn demo_config_is_valid() {
        let cfg = StubConfig::parse(DEMO).unwrap();
        let ids: Vec<_> = cfg.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["demo", "shop"]);
        let demo = cfg.apps[0].content();
        assert!(demo
            .flags
            .iter()
            .any(|f| f.rollout_bp == 5000 && f.variants.is_empty()));
        assert!(demo.flags.iter().any(|f| !f.variants.is_empty()));
        assert_eq!(demo.messages.len(), 2);
    }

    #[test]
    fn rollout_over_10000_names_the_field() {
        let text = r#"
            [[apps]]
            id = "a"
            keys = ["k"]
            [[apps.flags]]
            key = "ok"
            enabled = true
            [[apps.flags]]
            key = "bad"
            enabled = true
            rollout_bp = 12000
        "#;
        assert_eq!(
            err_text(text),
            "apps[0].flags[1].rollout_bp: 12000 is over 10000"
        );
    }

    #[test]
    fn duplicates_and_empty_keys_are_refused() {
        let dup_app = "[[apps]]\nid='a'\nkeys=['k']\n[[apps]]\nid='a'\nkeys=['k']\n";
        assert_eq!(err_text(dup_app), "apps[1].id: duplicate app id \"a\"");

        let no_keys = "[[apps]]\nid='a'\nkeys=[]\n";
        assert!(err_text(no_keys).starts_with("apps[0].keys: is empty"));

        let dup_flag = "[[apps]]\nid='a'\nkeys=['k']\n[[apps.flags]]\nkey='f'\nenabled=true\n[[apps.flags]]\nkey='f'\nenabled=false\n";
        assert_eq!(
            err_text(dup_flag),
            "apps[0].flags[1].key: duplicate flag key \"f\""
        );

        let dup_variant = r#"
            [[apps]]
            id = "a"
            keys = ["k"]
            [[apps.flags]]
            key = "mv"
            enabled = true
            variants = [{ key = "x", weight = 1 }, { key = "x", weight = 2 }]
        "#;
        assert_eq!(
            err_text(dup_variant),
            "apps[0].flags[0].variants[1].key: duplicate variant key \"x\""
        );

        // App keys are secrets: a refusal names the place, never the key.
        let dup_key = "[[apps]]\nid='a'\nkeys=['s3cret', 's3cret']\n";
        assert_eq!(err_text(dup_key), "apps[0].keys[1]: duplicate key");
        let empty_key = "[[apps]]\nid='a'\nkeys=['k', '']\n";
        assert_eq!(err_text(empty_key), "apps[0].keys[1]: is empty");

        let message = |id: &str, actions: &str| {
            format!(
                "[[apps.messages]]\nid='{id}'\ntitle='t'\nbody='b'\n\
                 trigger={{ on = 'session_start' }}\nactions=[{actions}]\n"
            )
        };
        let app = "[[apps]]\nid='a'\nkeys=['k']\n";
        let dup_message = format!("{app}{}{}", message("m", ""), message("m", ""));
        assert_eq!(
            err_text(&dup_message),
            "apps[0].messages[1].id: duplicate message id \"m\""
        );
        let ok = "{ id = 'ok', label = 'OK' }";
        let dup_action = format!("{app}{}", message("m", &format!("{ok}, {ok}")));
        assert_eq!(
            err_text(&dup_action),
            "apps[0].messages[0].actions[1].id: duplicate action id \"ok\""
        );
        let empty_action = format!("{app}{}", message("m", "{ id = '', label = 'x' }"));
        assert_eq!(
            err_text(&empty_action),
            "apps[0].messages[0].actions[0].id: is empty"
        );
    }

    #[test]
    fn toml_errors_carry_the_key() {
        let text = "[[apps]]\nid='a'\nkeys=['k']\nbogus=1\n";
        let e = err_text(text);
        assert!(e.contains("bogus"), "{e}");
        let text = "[[apps]]\nid='a'\nkeys='k'\n";
        let e = err_text(text);
        assert!(e.contains("keys") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apps.toml");
        std::fs::write(&path, "[[apps]]\nid='a'\nkeys=[]\n").unwrap();
        let e = StubConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}: apps[0].keys", path.display())),
            "{e}"
        );
    }

    #[test]
    fn etag_is_content_derived() {
        let cfg = StubConfig::parse(DEMO).unwrap();
        let a = cfg.apps[0].content().etag();
        assert_eq!(a, StubConfig::parse(DEMO).unwrap().apps[0].content().etag());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        let mut changed = cfg.apps[0].content().clone();
        changed.values.insert("x".into(), Value::Int(1));
        assert_ne!(a, changed.etag());
        assert_ne!(a, cfg.apps[1].content().etag());
    }

    #[test]
    fn version_rules() {
        let e1 = ETag("1".into());
        let e2 = ETag("2".into());
        let e3 = ETag("3".into());
        assert_eq!(startup_decision(None, &e1), Startup::File { version: 1 });
        // Unchanged file, nothing changed by admin: keep.
        let s = StoredVersion {
            version: 4,
            etag: e1.clone(),
            file_etag: e1.clone(),
        };
        assert_eq!(startup_decision(Some(&s), &e1), Startup::KeepStored);
        // Unchanged file, admin changed content: keep the admin content and version.
        let s = StoredVersion {
            version: 5,
            etag: e2.clone(),
            file_etag: e1.clone(),
        };
        assert_eq!(startup_decision(Some(&s), &e1), Startup::KeepStored);
        // File changed to something new: file wins, version bumps.
        assert_eq!(
            startup_decision(Some(&s), &e3),
            Startup::File { version: 6 }
        );
        // File changed to exactly what is served: no bump.
        assert_eq!(
            startup_decision(Some(&s), &e2),
            Startup::File { version: 5 }
        );

        assert_eq!(next_version(3, &e1, &e1), 3);
        assert_eq!(next_version(3, &e1, &e2), 4);
    }
}
