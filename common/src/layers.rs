//! Layered configuration: defaults, a TOML file, `PIXELPIPE_*` environment variables, then
//! `name=value` overrides from flags, later layers winning. Shared by every pixelpipe binary; each
//! brings its own config struct, which stays the one list of its settings.
//!
//! Every layer names a setting by the same dotted path (`kafka.linger_ms`). Environment variables
//! spell the path with `__` between sections (`PIXELPIPE_KAFKA__LINGER_MS=5`). Entries of a
//! `properties` table (librdkafka pass-through) keep their dotted names:
//! `PIXELPIPE_KAFKA__PROPERTIES__SASL_MECHANISMS=PLAIN` sets `sasl.mechanisms` (lower-cased, `_`
//! becomes `.`, as no librdkafka property name contains `_`), and `--set
//! kafka.properties.sasl.mechanisms=PLAIN` does the same. Text values are typed like the default at
//! the same path, so a wrong one fails naming the setting and where it came from.
//!
//! This module reads and types values and owns [`ConfigError`]; what a valid value is, is each
//! config struct's own business ([`Validate`], usually a list of [`check`]s).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Prefix of the environment variables pixelpipe reads.
pub const ENV_PREFIX: &str = "PIXELPIPE_";

/// Why a configuration cannot be used. Every message names the setting or the file, so a
/// process that refuses to start says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value the process cannot run with.
    #[error("invalid setting `{setting}`: {reason}")]
    Setting {
        /// Dotted name of the setting, e.g. `kafka.linger_ms`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file's path.
        path: String,
        /// What went wrong reading or parsing it.
        reason: String,
    },
}

impl ConfigError {
    /// A [`ConfigError::Setting`] naming `setting`.
    pub fn setting(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Setting {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The result of loading or checking a configuration.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A configuration struct that can check itself once loaded.
pub trait Validate {
    /// Checks every setting; the error names the wrong one (see [`check`]).
    fn validate(&self) -> Result<()>;
}

/// [`load`], then [`Validate::validate`]: what every binary does at start.
pub fn load_validated<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let config: T = load(file, env, overrides)?;
    config.validate()?;
    Ok(config)
}

/// `Ok` when `ok`, else an error naming `setting` and saying `reason`.
pub fn check(ok: bool, setting: &str, reason: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::setting(setting, reason))
    }
}

/// Builds a `T` from its defaults, an optional TOML file, environment variables (only
/// `PIXELPIPE_*` ones are read) and `path=value` overrides. Unknown names are errors.
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = toml::Table::try_from(T::default()).expect("defaults serialise");
    let mut table = defaults.clone();
    if let Some(path) = file {
        let file_err = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let from_file: toml::Table = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        merge(&mut table, from_file);
    }
    for (name, value) in env {
        if let Some(path) = env_path(&name) {
            set_path(&mut table, &defaults, &path, &value, &name)?;
        }
    }
    for (dotted, value) in overrides {
        let path = dotted_path(dotted);
        set_path(&mut table, &defaults, &path, value, dotted)?;
    }
    // serde_path_to_error: a wrong value deep in the tree (an unknown enum variant, a wrong
    // type) is reported at its dotted path, not as an error of the whole configuration.
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let setting = if path.is_empty() || path == "." {
                "config"
            } else {
                &path
            };
            ConfigError::setting(setting, e.inner().message().to_owned())
        },
    )
}

/// Deep-merges `over` into `base`: tables merge, everything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `PIXELPIPE_KAFKA__LINGER_MS` -> `["kafka", "linger_ms"]`; other variables -> `None`.
fn env_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    // PIXELPIPE_CONFIG names the file itself and PIXELPIPE_LOG the log filter; neither is a setting.
    if rest.is_empty() || rest == "CONFIG" || rest == "LOG" {
        return None;
    }
    let mut path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path.len() == 3 && path[1] == "properties" {
        path[2] = path[2].replace('_', ".");
    }
    Some(path)
}

/// `kafka.linger_ms` -> `["kafka", "linger_ms"]`; `kafka.properties.sasl.mechanisms` keeps the
/// property name whole.
fn dotted_path(dotted: &str) -> Vec<String> {
    let mut parts = dotted.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(section), Some("properties"), Some(prop)) => {
            vec![section.into(), "properties".into(), prop.into()]
        }
        _ => dotted.split('.').map(str::to_owned).collect(),
    }
}

/// Sets one setting from text, typed like its default so `PIXELPIPE_KAFKA__TOPIC=123` stays a
/// string and `..._LINGER_MS=x` fails naming the variable.
fn set_path(
    table: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    text: &str,
    source: &str,
) -> Result<()> {
    let setting = path.join(".");
    let Some((last, parents)) = path.split_last() else {
        return Err(ConfigError::setting(source, "names no setting"));
    };
    let mut node = table;
    let mut default_node = Some(defaults);
    for part in parents {
        let entry = node
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let toml::Value::Table(next) = entry else {
            return Err(ConfigError::setting(
                setting,
                format!("`{part}` is not a section (from {source})"),
            ));
        };
        node = next;
        default_node = default_node
            .and_then(|d| d.get(part))
            .and_then(toml::Value::as_table);
    }
    let bad = |what: &str| {
        ConfigError::setting(&setting, format!("{text:?} is not {what} (from {source})"))
    };
    let value = match default_node.and_then(|d| d.get(last)) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(text.trim().parse().map_err(|_| bad("a whole number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.trim().parse().map_err(|_| bad("true or false"))?)
        }
        // A comma-separated list, typed like the default's items (numbers stay numbers).
        Some(toml::Value::Array(items)) => {
            let numbers = matches!(items.first(), Some(toml::Value::Integer(_)));
            let parts = text.split(',').map(str::trim).filter(|s| !s.is_empty());
            if numbers {
                toml::Value::Array(
                    parts
                        .map(|s| s.parse().map(toml::Value::Integer))
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("a comma-separated list of whole numbers"))?,
                )
            } else {
                toml::Value::Array(parts.map(|s| toml::Value::String(s.into())).collect())
            }
        }
        Some(toml::Value::Table(_)) => {
            return Err(ConfigError::setting(
                setting,
                format!("is a section, not a value (from {source})"),
            ))
        }
        // Strings, and keys with no default (kafka.properties, or unknown names that the typed
        // read below rejects by name).
        _ => toml::Value::String(text.to_owned()),
    };
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        name: String,
        net: Net,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Net {
        port: u16,
        tls: bool,
        ports: Vec<u16>,
        hosts: Vec<String>,
        properties: BTreeMap<String, String>,
    }

    impl Default for Net {
        fn default() -> Self {
            Net {
                port: 80,
                tls: false,
                ports: vec![1],
                hosts: vec![],
                properties: BTreeMap::new(),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn setting_of(e: ConfigError) -> String {
        match e {
            ConfigError::Setting { setting, .. } => setting,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn later_layers_win_and_text_is_typed_like_the_default() {
        let dir = std::env::temp_dir().join(format!("pp-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(&file, "name = \"file\"\n[net]\nport = 81\ntls = true\n").unwrap();
        let s: Settings = load(
            Some(&file),
            env(&[
                ("PIXELPIPE_NET__PORT", "82"),
                ("PIXELPIPE_NET__PORTS", "7, 8"),
                ("PIXELPIPE_NET__HOSTS", "a,b"),
                ("PIXELPIPE_NET__PROPERTIES__SASL_MECHANISMS", "PLAIN"),
                ("PIXELPIPE_LOG", "debug"),
                ("OTHER", "x"),
            ]),
            &[
                ("name".into(), "123".into()),
                ("net.properties.client.id".into(), "me".into()),
            ],
        )
        .unwrap();
        assert_eq!(s.name, "123", "a string stays a string");
        assert_eq!((s.net.port, s.net.tls), (82, true));
        assert_eq!(s.net.ports, vec![7, 8]);
        assert_eq!(s.net.hosts, vec!["a", "b"]);
        assert_eq!(s.net.properties["sasl.mechanisms"], "PLAIN");
        assert_eq!(s.net.properties["client.id"], "me");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_setting_and_where_the_value_came_from() {
        let e = load::<Settings>(None, env(&[("PIXELPIPE_NET__PORT", "x")]), &[]).unwrap_err();
        assert!(e.to_string().contains("PIXELPIPE_NET__PORT"), "{e}");
        assert_eq!(setting_of(e), "net.port");
        let e = load::<Settings>(None, [], &[("net.tls".into(), "yes".into())]).unwrap_err();
        assert_eq!(setting_of(e), "net.tls");
        let e = load::<Settings>(None, [], &[("net".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("section"), "{e}");
        let e = load::<Settings>(None, [], &[("nope".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = load::<Settings>(Some(Path::new("/nonexistent/x.toml")), [], &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::File { path, .. } if path == "/nonexistent/x.toml"),
            "{e}"
        );
    }

    #[test]
    fn check_names_the_setting() {
        assert_eq!(check(true, "a.b", "why"), Ok(()));
        assert_eq!(
            check(false, "a.b", "must be at least 1")
                .unwrap_err()
                .to_string(),
            "invalid setting `a.b`: must be at least 1"
        );
    }
}
