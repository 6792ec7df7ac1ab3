//! Secrets as Stalwart writes them: `{"@type":"None"}`, `{"@type":"Value","secret":…}`,
//! `{"@type":"EnvironmentVariable","variableName":…}`, `{"@type":"File","filePath":…}`.
//! `Text` is accepted as a synonym of `Value` (Stalwart's `SecretTextOptional`).
//!
//! A secret is never printed: `Debug`, `Display` and serialization redact the value.

use super::reader::FieldError;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;

/// Where a secret comes from. Resolved at start with [`Secret::resolve`].
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Secret {
    /// No secret.
    #[default]
    None,
    /// The secret itself, written in the configuration.
    Value(SecretString),
    /// Read from an environment variable at start.
    EnvironmentVariable(String),
    /// Read from a file at start (surrounding white space is trimmed).
    File(PathBuf),
}

/// A resolved secret value. Its `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; the only way to read it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    pub fn is_none(&self) -> bool {
        matches!(self, Secret::None)
    }

    /// Reads the secret from where it lives. `field` is the path of the setting, for errors.
    pub fn resolve(&self, field: &str) -> Result<Option<SecretString>, FieldError> {
        let error = |message: String| FieldError {
            path: field.to_string(),
            message,
        };
        match self {
            Secret::None => Ok(None),
            Secret::Value(value) => Ok(Some(value.clone())),
            Secret::EnvironmentVariable(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Some(SecretString(value))),
                Ok(_) => Err(error(format!("environment variable {name} is empty"))),
                Err(std::env::VarError::NotPresent) => {
                    Err(error(format!("environment variable {name} is not set")))
                }
                Err(std::env::VarError::NotUnicode(_)) => Err(error(format!(
                    "environment variable {name} is not valid UTF-8"
                ))),
            },
            Secret::File(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Ok(Some(SecretString(text.trim().to_string())))
                }
                Ok(_) => Err(error(format!("file {} is empty", path.display()))),
                Err(cause) => Err(error(format!(
                    "cannot read file {}: {cause}",
                    path.display()
                ))),
            },
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::None => f.write_str("Secret::None"),
            Secret::Value(_) => f.write_str("Secret::Value(<redacted>)"),
            Secret::EnvironmentVariable(name) => write!(f, "Secret::EnvironmentVariable({name:?})"),
            Secret::File(path) => write!(f, "Secret::File({path:?})"),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Secret::None => map.serialize_entry("@type", "None")?,
            Secret::Value(_) => {
                map.serialize_entry("@type", "Value")?;
                map.serialize_entry("secret", "<redacted>")?;
            }
            Secret::EnvironmentVariable(name) => {
                map.serialize_entry("@type", "EnvironmentVariable")?;
                map.serialize_entry("variableName", name)?;
            }
            Secret::File(path) => {
                map.serialize_entry("@type", "File")?;
                map.serialize_entry("filePath", path)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::Value(SecretString::new("hunter2"));
        assert!(!format!("{secret:?}").contains("hunter2"));
        let json = serde_json::to_string(&secret).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(secret.resolve("x").unwrap().unwrap().expose(), "hunter2");
        assert_eq!(format!("{}", SecretString::new("hunter2")), "<redacted>");
    }

    #[test]
    fn missing_variable_and_file_name_the_field() {
        let error = Secret::EnvironmentVariable("COORDINATOR_TEST_SURELY_UNSET_VAR".into())
            .resolve("clusterKey")
            .unwrap_err();
        assert_eq!(error.path, "clusterKey");
        let error = error.to_string();
        assert!(error.starts_with("clusterKey: "), "{error}");
        assert!(
            error.contains("COORDINATOR_TEST_SURELY_UNSET_VAR"),
            "{error}"
        );
        let error = Secret::File("/nonexistent/coordinator/key".into())
            .resolve("authSecret")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("authSecret") && error.contains("/nonexistent/coordinator/key"),
            "{error}"
        );
    }

    #[test]
    fn file_secret_is_trimmed() {
        let path = std::env::temp_dir().join(format!("coordinator-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let value = Secret::File(path.clone())
            .resolve("clusterKey")
            .unwrap()
            .unwrap();
        assert_eq!(value.expose(), "s3cret");
        std::fs::remove_file(path).unwrap();
    }
}
