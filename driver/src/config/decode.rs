//! Reading cty-msgpack config objects into Rust values.
//!
//! Nomad decodes a `config {}` block with the plugin's hclspec and sends the result as
//! cty-msgpack. An object is a msgpack map with one entry per declared attribute, and an
//! unset attribute is `nil`. A number may arrive as a signed or unsigned integer, as a
//! float64, or as a decimal string for values such as `0.1` that float64 cannot
//! represent exactly.
//!
//! [`ObjectReader`] takes attributes out of such a map one by one, checks their types,
//! and reports any attribute left over. Which attributes exist is up to the
//! config types in the sibling modules, not this module.

use std::collections::BTreeMap;
use std::time::Duration;

use rmpv::Value;

/// Error for a config that cannot be decoded. `path` names the attribute, with block
/// names and list indexes before it (`mount[1].target`).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid msgpack encoding: {0}")]
    Msgpack(#[from] rmpv::decode::Error),

    #[error("trailing bytes after the msgpack value")]
    TrailingBytes,

    #[error("{path} must be an object (a msgpack map), got {found}")]
    NotAnObject { path: String, found: &'static str },

    #[error("attribute \"{path}\" must be {expected}, got {found}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: String,
    },

    #[error("unsupported attribute \"{path}\"; the supported attributes here are: {supported}")]
    Unsupported { path: String, supported: String },

    #[error("missing required attribute \"{path}\"")]
    Missing { path: String },

    #[error("invalid value for attribute \"{path}\": {reason}")]
    Invalid { path: String, reason: String },
}

impl DecodeError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// One cty object being read. Every `take_*` method removes the attribute, and
/// [`ObjectReader::finish`] rejects what is left.
#[derive(Debug)]
pub struct ObjectReader {
    prefix: String,
    entries: Vec<(String, Value)>,
    known: Vec<&'static str>,
}

impl ObjectReader {
    /// Parses `bytes` as one msgpack map. Empty input is an empty object, which is what
    /// Nomad sends when a plugin has no config block at all.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Ok(Self::new(String::new(), Vec::new()));
        }

        let mut cursor = bytes;
        let value = rmpv::decode::read_value(&mut cursor)?;
        if !cursor.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Self::from_value(String::new(), "the config", value)
    }

    fn from_value(prefix: String, name: &str, value: Value) -> Result<Self, DecodeError> {
        let Value::Map(pairs) = value else {
            return Err(DecodeError::NotAnObject {
                path: name.to_owned(),
                found: kind_of(&value),
            });
        };

        let mut entries = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let Value::String(key) = key else {
                return Err(DecodeError::NotAnObject {
                    path: name.to_owned(),
                    found: "a map with non-string keys",
                });
            };
            let key = key.into_str().ok_or_else(|| DecodeError::NotAnObject {
                path: name.to_owned(),
                found: "a map with keys that are not UTF-8",
            })?;
            entries.push((key, value));
        }
        Ok(Self::new(prefix, entries))
    }

    fn new(prefix: String, entries: Vec<(String, Value)>) -> Self {
        Self {
            prefix,
            entries,
            known: Vec::new(),
        }
    }

    /// Full path of attribute `name` in this object, for error messages.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Removes attribute `name`, mapping `nil` and absence to `None`.
    fn take(&mut self, name: &'static str) -> Option<Value> {
        self.known.push(name);
        let index = self.entries.iter().position(|(key, _)| key == name)?;
        match self.entries.swap_remove(index).1 {
            Value::Nil => None,
            value => Some(value),
        }
    }

    pub fn take_string(&mut self, name: &'static str) -> Result<Option<String>, DecodeError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        as_string(&self.path(name), value).map(Some)
    }

    pub fn take_bool(&mut self, name: &'static str) -> Result<Option<bool>, DecodeError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Boolean(flag)) => Ok(Some(flag)),
            Some(other) => Err(wrong_type(self.path(name), "a bool", &other)),
        }
    }

    /// Takes a number that must be a whole number from 0 to `u64::MAX`.
    pub fn take_u64(&mut self, name: &'static str) -> Result<Option<u64>, DecodeError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        as_whole_number(&self.path(name), value).map(Some)
    }

    /// Takes a duration written as a Go duration string, such as `"30s"` or `"1m30s"`.
    pub fn take_duration(&mut self, name: &'static str) -> Result<Option<Duration>, DecodeError> {
        let Some(text) = self.take_string(name)? else {
            return Ok(None);
        };
        super::duration::parse_duration(&text)
            .map(Some)
            .map_err(|reason| DecodeError::invalid(self.path(name), reason))
    }

    pub fn take_string_list(&mut self, name: &'static str) -> Result<Vec<String>, DecodeError> {
        self.take_list(name, "a list of strings", |path, item| {
            as_string(&path, item)
        })
    }

    pub fn take_string_map(
        &mut self,
        name: &'static str,
    ) -> Result<BTreeMap<String, String>, DecodeError> {
        let path = self.path(name);
        let Some(value) = self.take(name) else {
            return Ok(BTreeMap::new());
        };
        let object = Self::from_value(format!("{path}."), &path, value).map_err(|_| {
            DecodeError::WrongType {
                path: path.clone(),
                expected: "a map of strings",
                found: "another type".to_owned(),
            }
        })?;

        let mut map = BTreeMap::new();
        for (key, value) in object.entries {
            let value = match value {
                Value::Nil => continue,
                value => as_string(&format!("{path}.{key}"), value)?,
            };
            map.insert(key, value);
        }
        Ok(map)
    }

    /// Takes a single nested block, absent (`nil`) when the user did not write it.
    pub fn take_block(&mut self, name: &'static str) -> Result<Option<ObjectReader>, DecodeError> {
        let path = self.path(name);
        match self.take(name) {
            None => Ok(None),
            Some(value) => Self::from_value(format!("{path}."), &path, value).map(Some),
        }
    }

    /// Takes a list of repeated blocks, empty when the user wrote none.
    pub fn take_block_list(
        &mut self,
        name: &'static str,
    ) -> Result<Vec<ObjectReader>, DecodeError> {
        self.take_list(name, "a list of blocks", |path, item| {
            Self::from_value(format!("{path}."), &path, item)
        })
    }

    /// Takes a list, reading each item with its path (`name[index]`); absent is empty.
    fn take_list<T>(
        &mut self,
        name: &'static str,
        expected: &'static str,
        read_item: impl Fn(String, Value) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let path = self.path(name);
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| read_item(format!("{path}[{index}]"), item))
                .collect(),
            Some(other) => Err(wrong_type(path, expected, &other)),
        }
    }

    /// Rejects attributes that no `take_*` call asked for. Nomad checks the user's block
    /// against the schema first, so this only fires when the schema and the decoder
    /// disagree or a client sends a config built for another plugin version.
    pub fn finish(self) -> Result<(), DecodeError> {
        let Some((unknown, _)) = self.entries.first() else {
            return Ok(());
        };

        let mut supported = self.known.clone();
        supported.sort_unstable();
        Err(DecodeError::Unsupported {
            path: format!("{}{unknown}", self.prefix),
            supported: supported.join(", "),
        })
    }
}

fn as_string(path: &str, value: Value) -> Result<String, DecodeError> {
    match value {
        Value::String(text) => text.into_str().ok_or_else(|| DecodeError::WrongType {
            path: path.to_owned(),
            expected: "a string",
            found: "a string that is not UTF-8".to_owned(),
        }),
        other => Err(wrong_type(path.to_owned(), "a string", &other)),
    }
}

/// Accepts every form cty uses for a number: integers in signed or unsigned msgpack
/// forms, float64 with no fractional part, and decimal strings.
fn as_whole_number(path: &str, value: Value) -> Result<u64, DecodeError> {
    let not_whole = |shown: String| {
        DecodeError::invalid(
            path,
            format!(
                "expected a whole number from 0 to {}, got {shown}",
                u64::MAX
            ),
        )
    };

    match value {
        Value::Integer(number) => number.as_u64().ok_or_else(|| not_whole(number.to_string())),
        Value::F64(number) => float_to_u64(number).ok_or_else(|| not_whole(number.to_string())),
        Value::F32(number) => {
            float_to_u64(f64::from(number)).ok_or_else(|| not_whole(number.to_string()))
        }
        Value::String(text) => {
            let text = text.into_str().unwrap_or_default();
            text.parse::<u64>()
                .map_err(|_| not_whole(format!("{text:?}")))
        }
        other => Err(wrong_type(path.to_owned(), "a number", &other)),
    }
}

fn float_to_u64(number: f64) -> Option<u64> {
    // 2^64 as f64; every smaller non-negative integral float converts exactly.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    let whole = number.is_finite() && number.fract() == 0.0 && (0.0..LIMIT).contains(&number);
    whole.then_some(number as u64)
}

fn wrong_type(path: String, expected: &'static str, found: &Value) -> DecodeError {
    DecodeError::WrongType {
        path,
        expected,
        found: kind_of(found).to_owned(),
    }
}

/// Names the cty type that a msgpack value stands for.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Nil => "null",
        Value::Boolean(_) => "a bool",
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => "a number",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary data",
        Value::Array(_) => "a list",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an unknown value",
    }
}

/// Encodes `entries` as a msgpack map, the shape of a cty object, for tests.
#[cfg(test)]
pub(crate) fn encode_object(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let pairs = entries
        .into_iter()
        .map(|(key, value)| (Value::from(key), value))
        .collect();
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &Value::Map(pairs))
        .expect("writing to a Vec cannot fail");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).expect("writing to a Vec cannot fail");
        bytes
    }

    #[test]
    fn whole_number_accepts_every_cty_form() {
        let bytes = encode_object(vec![
            ("small", Value::from(200u64)),
            ("signed", Value::from(7i64)),
            ("float", Value::F64(10000.0)),
            ("decimal", Value::from("18446744073709551615")),
        ]);
        let mut reader = ObjectReader::from_msgpack(&bytes).unwrap();

        assert_eq!(reader.take_u64("small").unwrap(), Some(200));
        assert_eq!(reader.take_u64("signed").unwrap(), Some(7));
        assert_eq!(reader.take_u64("float").unwrap(), Some(10000));
        assert_eq!(reader.take_u64("decimal").unwrap(), Some(u64::MAX));
        reader.finish().unwrap();
    }

    #[test]
    fn whole_number_rejects_fraction() {
        let bytes = encode_object(vec![("scale", Value::from("0.1"))]);
        let mut reader = ObjectReader::from_msgpack(&bytes).unwrap();

        let error = reader.take_u64("scale").unwrap_err().to_string();
        assert!(error.contains("\"scale\""), "{error}");
        assert!(error.contains("whole number"), "{error}");
    }

    #[test]
    fn wrong_type_names_nested_path() {
        let mount = Value::Map(vec![(Value::from("target"), Value::Boolean(true))]);
        let bytes = encode_object(vec![("mount", Value::Array(vec![mount]))]);
        let mut reader = ObjectReader::from_msgpack(&bytes).unwrap();
        let mut mounts = reader.take_block_list("mount").unwrap();

        let error = mounts[0].take_string("target").unwrap_err().to_string();
        assert_eq!(
            error,
            "attribute \"mount[0].target\" must be a string, got a bool"
        );
    }

    #[test]
    fn nil_reads_as_absent() {
        let bytes = encode_object(vec![("args", Value::Nil), ("image", Value::Nil)]);
        let mut reader = ObjectReader::from_msgpack(&bytes).unwrap();

        assert!(reader.take_string_list("args").unwrap().is_empty());
        assert_eq!(reader.take_string("image").unwrap(), None);
        reader.finish().unwrap();
    }

    #[test]
    fn finish_rejects_unknown_attribute() {
        let bytes = encode_object(vec![
            ("image", Value::from("redis")),
            ("imagee", Value::from("x")),
        ]);
        let mut reader = ObjectReader::from_msgpack(&bytes).unwrap();
        reader.take_string("image").unwrap();

        let error = reader.finish().unwrap_err().to_string();
        assert!(error.contains("\"imagee\""), "{error}");
        assert!(error.contains("image"), "{error}");
    }

    #[test]
    fn empty_input_is_empty_object() {
        let reader = ObjectReader::from_msgpack(&[]).unwrap();
        reader.finish().unwrap();
    }

    #[test]
    fn non_map_root_is_rejected() {
        let bytes = encode(&Value::from("just a string"));
        let error = ObjectReader::from_msgpack(&bytes).unwrap_err().to_string();
        assert_eq!(
            error,
            "the config must be an object (a msgpack map), got a string"
        );
    }
}
