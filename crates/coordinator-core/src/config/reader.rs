//! Reads a configuration object field by field, collecting every problem with
//! the path of the field instead of stopping at the first one (which is all a
//! derived serde `Deserialize` can do).

use super::duration::parse_duration;
use super::secret::{Secret, SecretString};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// One problem in a configuration, with the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `nats.capacityClient`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Every problem found in one configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors across nested readers.
#[derive(Default)]
pub(crate) struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the fields of one JSON object. Fields are removed as they are read, so
/// [`ObjectReader::finish`] can report the ones nobody asked for as unknown.
pub(crate) struct ObjectReader<'e> {
    errors: &'e mut Errors,
    /// Path prefix of this object's fields (`""` at the top).
    prefix: String,
    fields: Map<String, Value>,
}

impl<'e> ObjectReader<'e> {
    pub fn new(errors: &'e mut Errors, prefix: &str, fields: Map<String, Value>) -> Self {
        Self {
            errors,
            prefix: prefix.to_string(),
            fields,
        }
    }

    /// Reads fields of this object while reporting them under `prefix`: the
    /// fields of a carrier sit beside `@type` but are reported as `nats.…`.
    pub fn with_prefix<T>(&mut self, prefix: &str, read: impl FnOnce(&mut Self) -> T) -> T {
        let inner = join(&self.prefix, prefix);
        let outer = std::mem::replace(&mut self.prefix, inner);
        let value = read(self);
        self.prefix = outer;
        value
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.prefix, key)
    }

    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.errors.push(path, message);
    }

    /// Removes a field; JSON `null` counts as absent.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.fields.remove(key).filter(|value| !value.is_null())
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.take(key)? {
            Value::String(text) => Some(text),
            other => {
                self.error(
                    key,
                    format!("expected a string, found {}", type_name(&other)),
                );
                None
            }
        }
    }

    /// Whether the field is there (JSON `null` counts as absent).
    pub fn present(&self, key: &str) -> bool {
        self.fields.get(key).is_some_and(|value| !value.is_null())
    }

    pub fn required_string(&mut self, key: &str) -> String {
        if !self.present(key) {
            self.error(key, "is required");
            return String::new();
        }
        match self.string(key) {
            Some(text) if !text.trim().is_empty() => text,
            Some(_) => {
                self.error(key, "must not be empty");
                String::new()
            }
            None => String::new(),
        }
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.take(key) {
            None => default,
            Some(Value::Bool(value)) => value,
            Some(other) => {
                self.error(
                    key,
                    format!("expected true or false, found {}", type_name(&other)),
                );
                default
            }
        }
    }

    /// An unsigned integer within `min..=max`, or `None` when absent.
    pub fn optional_u64(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let value = self.take(key)?;
        let number = match &value {
            Value::Number(number) => number.as_u64(),
            Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        let Some(number) = number else {
            self.error(
                key,
                format!("expected a whole number from {min} to {max}, found {value}"),
            );
            return None;
        };
        if number < min {
            self.error(key, format!("must be at least {min}, found {number}"));
            return None;
        }
        if number > max {
            self.error(key, format!("must be at most {max}, found {number}"));
            return None;
        }
        Some(number)
    }

    pub fn u64_or(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        self.optional_u64(key, min, max).unwrap_or(default)
    }

    pub fn optional_duration(
        &mut self,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let value = self.take(key)?;
        let parsed = match &value {
            Value::String(text) => parse_duration(text),
            Value::Number(number) => number.as_u64().map(Duration::from_millis).ok_or_else(|| {
                format!("expected a duration in whole milliseconds, found {number}")
            }),
            other => Err(format!(
                "expected a duration such as \"5s\", \"250ms\" or 1000 (milliseconds), found {}",
                type_name(other)
            )),
        };
        match parsed {
            Ok(duration) if duration < min => {
                self.error(
                    key,
                    format!("must be at least {}, found {}", show(min), show(duration)),
                );
                None
            }
            Ok(duration) if duration > max => {
                self.error(
                    key,
                    format!("must be at most {}, found {}", show(max), show(duration)),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    pub fn duration_or(
        &mut self,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        self.optional_duration(key, min, max).unwrap_or(default)
    }

    /// A list of strings; a single string is accepted as a list of one, and
    /// Stalwart's set form, `{"a": true, "b": true}`, as the list of the
    /// entries that are `true` (sorted: a set has no order).
    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let value = self.take(key)?;
        match value {
            Value::String(text) => Some(vec![text]),
            Value::Object(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (item, member) in entries {
                    match member {
                        Value::Bool(true) if !item.trim().is_empty() => out.push(item),
                        Value::Bool(true) => self.error(key, "must not list an empty entry"),
                        Value::Bool(false) => {}
                        other => self.error(
                            &format!("{key}.{item}"),
                            format!(
                                "expected true or false (a set lists its entries as keys), found {}",
                                type_name(&other)
                            ),
                        ),
                    }
                }
                Some(out)
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(text) if !text.trim().is_empty() => out.push(text),
                        Value::String(_) => {
                            self.error(&format!("{key}[{index}]"), "must not be empty")
                        }
                        other => self.error(
                            &format!("{key}[{index}]"),
                            format!("expected a string, found {}", type_name(&other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!(
                        "expected a list of strings (or a set of them), found {}",
                        type_name(&other)
                    ),
                );
                None
            }
        }
    }

    /// A list of strings with at least `min_items` entries.
    pub fn strings_min(
        &mut self,
        key: &str,
        default: Option<Vec<String>>,
        min_items: usize,
    ) -> Vec<String> {
        if !self.present(key) {
            return default.unwrap_or_else(|| {
                self.error(key, format!("is required (a list of at least {min_items})"));
                Vec::new()
            });
        }
        let list = self.strings(key).unwrap_or_default();
        if list.len() < min_items {
            self.error(
                key,
                format!("must list at least {min_items}, found {}", list.len()),
            );
        }
        list
    }

    /// An object of string values (numbers and booleans are taken as their text).
    pub fn string_map(&mut self, key: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        match self.take(key) {
            None => {}
            Some(Value::Object(fields)) => {
                for (name, value) in fields {
                    match value {
                        Value::String(text) => {
                            out.insert(name, text);
                        }
                        Value::Number(n) => {
                            out.insert(name, n.to_string());
                        }
                        Value::Bool(b) => {
                            out.insert(name, b.to_string());
                        }
                        other => self.error(
                            &format!("{key}.{name}"),
                            format!("expected a string, found {}", type_name(&other)),
                        ),
                    }
                }
            }
            Some(other) => self.error(
                key,
                format!("expected an object of strings, found {}", type_name(&other)),
            ),
        }
        out
    }

    /// A secret object (see [`Secret`]).
    pub fn secret(&mut self, key: &str) -> Secret {
        let Some(value) = self.take(key) else {
            return Secret::None;
        };
        let path = self.path(key);
        let Value::Object(fields) = value else {
            self.errors.push(
                path,
                format!(
                    "expected a secret object such as {{\"@type\":\"Value\",\"secret\":\"…\"}}, found {}",
                    type_name(&value)
                ),
            );
            return Secret::None;
        };
        let mut reader = ObjectReader::new(self.errors, &path, fields);
        let kind = if reader.present("@type") {
            reader.string("@type")
        } else {
            reader.error(
                "@type",
                "is required (None, Value, EnvironmentVariable or File)",
            );
            None
        };
        let secret = match kind.as_deref() {
            Some("None") => Secret::None,
            Some("Value") | Some("Text") => {
                Secret::Value(SecretString::new(reader.required_string("secret")))
            }
            Some("EnvironmentVariable") => {
                Secret::EnvironmentVariable(reader.required_string("variableName"))
            }
            Some("File") => Secret::File(reader.required_string("filePath").into()),
            Some(other) => {
                reader.error(
                    "@type",
                    format!("unknown secret type {other:?}; expected None, Value, EnvironmentVariable or File"),
                );
                Secret::None
            }
            None => Secret::None,
        };
        reader.finish();
        secret
    }

    /// Reports every field that was not read as unknown.
    pub fn finish(self) {
        let ObjectReader {
            errors,
            prefix,
            fields,
        } = self;
        for key in fields.keys() {
            errors.push(join(&prefix, key), "unknown field");
        }
    }
}

fn show(duration: Duration) -> String {
    super::duration::format_duration(duration)
}
