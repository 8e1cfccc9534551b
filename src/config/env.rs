//! Environment: `.env` loading and `env:NAME` substitution in config values.
//!
//! Every string value anywhere in the config tree that starts with `env:` is replaced
//! by that environment variable. The reference turned a missing variable into `""`
//! with a warning; we keep that for ordinary values but stop startup when the value
//! is a secret (the key name mentions a key, token, secret or password), because a
//! gateway running with an empty provider key fails every request later, far from
//! the cause. `env:NAME?` explicitly allows a missing variable (it becomes `""`).

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
    substitute_at(value, &mut String::new(), "", file)
}

fn substitute_at(
    value: &mut Value,
    path: &mut String,
    last_key: &str,
    file: &Path,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) => {
            if let Some(spec) = text.strip_prefix(ENV_PREFIX) {
                *text = resolve(spec.trim(), path, last_key, file)?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_at(item, path, last_key, file)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                push_key(path, key);
                substitute_at(item, path, key, file)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
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

fn resolve(spec: &str, path: &str, key: &str, file: &Path) -> Result<String, ConfigError> {
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
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
            file,
            path,
            format!("environment variable {name} is not valid UTF-8"),
        )),
        Err(std::env::VarError::NotPresent) => {
            if optional {
                Ok(String::new())
            } else if is_secret_key(key) {
                Err(ConfigError::new(
                    file,
                    path,
                    format!(
                        "environment variable {name} is not set (set it, add it to .env, \
                         or write \"env:{name}?\" to allow it to be missing)"
                    ),
                ))
            } else {
                tracing::warn!(
                    "{}: {path}: environment variable {name} is not set; using an empty string",
                    file.display()
                );
                Ok(String::new())
            }
        }
    }
}

/// Config keys whose values are credentials.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["key", "token", "secret", "password", "credential"]
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
        assert_eq!(tree["connections"]["x"]["api_key"], "");
        assert_eq!(tree["connections"]["x"]["api_base"], "");

        let mut tree = json!({"groups": {"g": {"api_keys": ["env:LMP_TEST_MISSING_3"]}}});
        let err = substitute(&mut tree, file).unwrap_err();
        assert_eq!(err.key, "groups.g.api_keys[0]");
    }
}
