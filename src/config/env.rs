//! Environment: `.env` loading and `env:NAME` substitution in config values.
//!
//! Every string value anywhere in the config tree that starts with `env:` is replaced
//! by that environment variable. The reference turned a missing variable into `""`
//! with a warning; we keep that for ordinary values but stop startup when the value
//! is a secret (the key name mentions a key, token, secret or password), because a
//! gateway running with an empty provider key fails every request later, far from
//! the cause. A secret set to an empty string stops startup too: an empty client key
//! or metrics token would otherwise let requests without a key in.
//!
//! `env:NAME?` explicitly allows the variable to be missing or empty: the value is
//! then absent (removed from its table or list, so the key takes its default, which
//! for a secret means "none"), and that is logged.

use std::path::Path;

use serde_json::Value;

use super::ConfigError;

const ENV_PREFIX: &str = "env:";

/// Load a `.env` file into the process environment; its values override variables
/// already set (as the reference did). `None` means the default `.env` in the working
/// directory, which may be absent; an explicitly named file must exist.
pub fn load_dotenv(explicit: Option<&Path>) -> Result<(), String> {
    match explicit {
        None => match dotenvy::from_path_override(".env") {
            Ok(()) => Ok(()),
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(".env: {e}")),
        },
        Some(path) => {
            dotenvy::from_path_override(path).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// Replace `env:NAME` strings in the whole tree, in place.
pub fn substitute(value: &mut Value, file: &Path) -> Result<(), ConfigError> {
    if let Resolved::Absent = substitute_at(value, &mut String::new(), "", file)? {
        *value = Value::Null;
    }
    Ok(())
}

/// What became of a value: kept (substituted or not), or absent (`env:NAME?` with
/// the variable missing or empty), to be removed from its parent.
enum Resolved {
    Kept,
    Absent,
}

fn substitute_at(
    value: &mut Value,
    path: &mut String,
    last_key: &str,
    file: &Path,
) -> Result<Resolved, ConfigError> {
    match value {
        Value::String(text) => {
            if let Some(spec) = text.strip_prefix(ENV_PREFIX) {
                match resolve(spec.trim(), path, last_key, file)? {
                    Some(resolved) => *text = resolved,
                    None => return Ok(Resolved::Absent),
                }
            }
        }
        Value::Array(items) => {
            let mut absent = Vec::new();
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if let Resolved::Absent = substitute_at(item, path, last_key, file)? {
                    absent.push(i);
                }
                path.truncate(len);
            }
            for i in absent.into_iter().rev() {
                items.remove(i);
            }
        }
        Value::Object(map) => {
            let mut absent = Vec::new();
            for (key, item) in map.iter_mut() {
                let len = path.len();
                push_key(path, key);
                if let Resolved::Absent = substitute_at(item, path, key, file)? {
                    absent.push(key.clone());
                }
                path.truncate(len);
            }
            for key in absent {
                map.shift_remove(&key);
            }
        }
        _ => {}
    }
    Ok(Resolved::Kept)
}

/// Append `key` to a dotted path, quoting keys that contain dots or glob characters
/// (routing patterns) so the path stays readable.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if key.is_empty() || key.contains(['.', ' ', '*', '?', '[', ']', '"']) {
        path.push_str(&format!("{key:?}"));
    } else {
        path.push_str(key);
    }
}

/// The value of `env:NAME` (`spec` is `NAME` or `NAME?`); `None` for an optional
/// variable that is missing or empty. Error messages name the variable, never its value.
fn resolve(spec: &str, path: &str, key: &str, file: &Path) -> Result<Option<String>, ConfigError> {
    let (name, optional) = match spec.strip_suffix('?') {
        Some(name) => (name, true),
        None => (spec, false),
    };
    if name.is_empty() {
        return Err(ConfigError::new(
            file,
            path,
            "`env:` must be followed by a variable name",
        ));
    }
    let value = match std::env::var(name) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ConfigError::new(
                file,
                path,
                format!("environment variable {name} is not valid UTF-8"),
            ))
        }
        Err(std::env::VarError::NotPresent) => None,
    };
    let state = if value.is_some() { "empty" } else { "not set" };
    match value {
        Some(value) if !value.is_empty() => Ok(Some(value)),
        _ if optional => {
            tracing::info!(
                "{}: {path}: environment variable {name} is {state}; the setting is left out (\"env:{name}?\")",
                file.display()
            );
            Ok(None)
        }
        _ if is_secret_key(key) => Err(ConfigError::new(
            file,
            path,
            format!(
                "environment variable {name} is {state} (set it, add it to .env, \
                 or write \"env:{name}?\" to leave the setting out when it is missing)"
            ),
        )),
        Some(value) => Ok(Some(value)),
        None => {
            tracing::warn!(
                "{}: {path}: environment variable {name} is not set; using an empty string",
                file.display()
            );
            Ok(Some(String::new()))
        }
    }
}

/// Config keys whose values are credentials (`api_key`, `api_keys`, `token`,
/// `client_secret`, an `Authorization` header, ...); counts such as `max_tokens` are not.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.contains("tokens")
        && [
            "key",
            "token",
            "secret",
            "password",
            "credential",
            "authorization",
        ]
        .iter()
        .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn substitutes_nested_values_and_reports_missing_secrets() {
        std::env::set_var("LMP_TEST_SUBST", "value-1");
        let file = Path::new("c.toml");
        let mut tree =
            json!({"a": {"b": ["env:LMP_TEST_SUBST", "plain"]}, "c": "env: LMP_TEST_SUBST"});
        substitute(&mut tree, file).unwrap();
        assert_eq!(
            tree,
            json!({"a": {"b": ["value-1", "plain"]}, "c": "value-1"})
        );

        let mut tree = json!({"connections": {"x": {"api_key": "env:LMP_TEST_MISSING_1"}}});
        let err = substitute(&mut tree, file).unwrap_err();
        assert_eq!(err.key, "connections.x.api_key");
        assert!(err.problem.contains("LMP_TEST_MISSING_1"));

        let mut tree = json!({"connections": {"x": {"api_key": "env:LMP_TEST_MISSING_1?", "api_base": "env:LMP_TEST_MISSING_2"}}});
        substitute(&mut tree, file).unwrap();
        assert_eq!(tree["connections"]["x"], json!({"api_base": ""}));

        let mut tree = json!({"groups": {"g": {"api_keys": ["env:LMP_TEST_MISSING_3"]}}});
        let err = substitute(&mut tree, file).unwrap_err();
        assert_eq!(err.key, "groups.g.api_keys[0]");
    }

    #[test]
    fn empty_secrets_stop_startup_and_optional_ones_are_left_out() {
        std::env::set_var("LMP_TEST_EMPTY_1", "");
        std::env::set_var("LMP_TEST_SET_1", "client-key-1");
        let file = Path::new("c.toml");

        // `api_keys = ["env:TEAM_KEY"]` with TEAM_KEY set but empty: a startup error
        // naming the key and the variable, not "" (which matched a missing key).
        let mut tree = json!({"groups": {"g": {"api_keys": ["env:LMP_TEST_EMPTY_1"]}}});
        let err = substitute(&mut tree, file).unwrap_err();
        assert_eq!(err.key, "groups.g.api_keys[0]");
        assert!(err.problem.contains("LMP_TEST_EMPTY_1 is empty"), "{err}");

        let mut tree = json!({"metrics": {"token": "env:LMP_TEST_EMPTY_1"}});
        let err = substitute(&mut tree, file).unwrap_err();
        assert_eq!(err.key, "metrics.token");

        // `env:NAME?`: missing or empty means absent.
        let mut tree = json!({
            "groups": {"g": {"api_keys": ["env:LMP_TEST_EMPTY_1?", "env:LMP_TEST_SET_1?", "env:LMP_TEST_MISSING_4?"]}},
            "metrics": {"token": "env:LMP_TEST_EMPTY_1?", "path": "/m"},
        });
        substitute(&mut tree, file).unwrap();
        assert_eq!(
            tree,
            json!({"groups": {"g": {"api_keys": ["client-key-1"]}}, "metrics": {"path": "/m"}})
        );

        // Counts are not secrets: an empty max_tokens stays an ordinary (empty) value.
        let mut tree = json!({"max_tokens": "env:LMP_TEST_EMPTY_1"});
        substitute(&mut tree, file).unwrap();
        assert_eq!(tree["max_tokens"], "");
        assert!(is_secret_key("Authorization") && is_secret_key("x-api-key"));
    }
}
