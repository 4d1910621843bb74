//! Generator of the cty-msgpack bytes that Nomad sends for a `config {}` block.
//!
//! Nomad decodes the block with the plugin's hclspec (hcldec) into one cty value and
//! encodes it with go-cty's msgpack encoder. [`encode_with_spec`] repeats both steps
//! for an HCL-like [`Value`]: absent attributes become `nil`, absent block lists become
//! empty arrays, `Default` specs take their literal, unknown attributes are rejected,
//! and object keys come out in byte order. [`encode_value`] encodes a value as it is,
//! which lets tests send bytes that Nomad itself would never produce, such as a bool
//! where the schema wants a number.
//!
//! Numbers follow go-cty 1.16 and newer: whole numbers that fit int64 use the smallest
//! msgpack integer form (unsigned forms for non-negative values), other numbers that
//! float64 represents exactly use float64, and everything else is a decimal string.
//! Type conversion is strict: a value must already have the attribute's type, where
//! hcldec would also convert, for example, a number to a string.

use std::collections::BTreeMap;

use styx_driver::proto::hclspec::{Spec, spec::Block as Kind};

/// HCL-like config value. Numbers are kept as decimal text, as HCL parses them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    List(Vec<Value>),
    /// An object, a map or a block body, keyed by attribute name.
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// Creates a number from its decimal text, such as `"200"` or `"0.1"`.
    pub fn number(text: &str) -> Self {
        Self::Number(text.to_owned())
    }

    pub fn string(text: &str) -> Self {
        Self::String(text.to_owned())
    }

    pub fn strings(items: &[&str]) -> Self {
        Self::List(items.iter().map(|item| Self::string(item)).collect())
    }

    pub fn object<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::Object(
            entries
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    }
}

/// Error for a config body that the spec rejects, or a spec Nomad could not convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn error<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(message.into()))
}

/// Decodes `body` with `spec` as hcldec does and encodes the result as cty-msgpack.
pub fn encode_with_spec(spec: &Spec, body: &Value) -> Result<Vec<u8>, SpecError> {
    let value = decode(spec, body, None)?;
    Ok(encode_value(&value))
}

/// Encodes `value` by its own shape, without a spec.
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_value(&mut bytes, value);
    bytes
}

/// Applies one spec node to `body`, the enclosing block's attributes. `implied_name` is
/// the key of the enclosing `Object`, which names a directly nested `Attr` or block.
fn decode(spec: &Spec, body: &Value, implied_name: Option<&str>) -> Result<Value, SpecError> {
    let Some(kind) = &spec.block else {
        return error("spec node has no kind");
    };
    let name_or = |explicit: &str| -> Result<String, SpecError> {
        match (explicit, implied_name) {
            ("", Some(implied)) => Ok(implied.to_owned()),
            ("", None) => error("Missing name in attribute spec"),
            (explicit, _) => Ok(explicit.to_owned()),
        }
    };

    match kind {
        Kind::Object(object) => decode_object(&object.attributes, body),
        Kind::Attr(attr) => {
            let name = name_or(&attr.name)?;
            match lookup(body, &name) {
                None if attr.required => error(format!("Missing required argument {name:?}")),
                None => Ok(Value::Null),
                Some(value) => convert(value, &attr.r#type, &name),
            }
        }
        Kind::Default(default) => {
            let primary = default
                .primary
                .as_deref()
                .ok_or_else(|| SpecError("Default without primary".into()))?;
            let fallback = default
                .default
                .as_deref()
                .ok_or_else(|| SpecError("Default without default".into()))?;
            match decode(primary, body, None)? {
                Value::Null => decode(fallback, body, None),
                value => Ok(value),
            }
        }
        Kind::Literal(literal) => parse_literal(&literal.value),
        Kind::BlockValue(block) => {
            let name = name_or(&block.name)?;
            let nested = nested_spec(block.nested.as_deref())?;
            match lookup(body, &name) {
                None if block.required => error(format!("Missing {name} block")),
                None => Ok(Value::Null),
                Some(inner) => decode(nested, inner, None),
            }
        }
        Kind::BlockList(list) => {
            let name = name_or(&list.name)?;
            let nested = nested_spec(list.nested.as_deref())?;
            match lookup(body, &name) {
                None => Ok(Value::List(Vec::new())),
                Some(Value::List(items)) => items
                    .iter()
                    .map(|item| decode(nested, item, None))
                    .collect::<Result<_, _>>()
                    .map(Value::List),
                Some(_) => error(format!("{name} must be a list of blocks")),
            }
        }
        Kind::BlockAttrs(attrs) => {
            let name = name_or(&attrs.name)?;
            match lookup(body, &name) {
                None if attrs.required => error(format!("Missing {name} block")),
                None => Ok(Value::Null),
                Some(value) => convert(value, &format!("map({})", attrs.r#type), &name),
            }
        }
        other => error(format!(
            "spec kind {other:?} is not supported by this generator"
        )),
    }
}

fn decode_object(
    attributes: &std::collections::HashMap<String, Spec>,
    body: &Value,
) -> Result<Value, SpecError> {
    let Value::Object(entries) = body else {
        return error("block body must be an object");
    };
    if let Some(unknown) = entries.keys().find(|key| !attributes.contains_key(*key)) {
        return error(format!("Unsupported argument {unknown:?}"));
    }

    let mut object = BTreeMap::new();
    for (key, spec) in attributes {
        object.insert(key.clone(), decode(spec, body, Some(key))?);
    }
    Ok(Value::Object(object))
}

fn nested_spec(nested: Option<&Spec>) -> Result<&Spec, SpecError> {
    nested.ok_or_else(|| SpecError("block spec without nested spec".into()))
}

/// Returns attribute `name` of a block body, treating an explicit null as absent.
fn lookup<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    match body {
        Value::Object(entries) => entries.get(name).filter(|value| **value != Value::Null),
        _ => None,
    }
}

/// Checks `value` against the HCL type expression `ty`.
fn convert(value: &Value, ty: &str, name: &str) -> Result<Value, SpecError> {
    let mismatch = || {
        error(format!(
            "Incorrect attribute value type for {name:?}: expected {ty}"
        ))
    };
    if let Some(element) = ty
        .strip_prefix("list(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        let Value::List(items) = value else {
            return mismatch();
        };
        return items
            .iter()
            .map(|item| convert(item, element, name))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    if let Some(element) = ty
        .strip_prefix("map(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        let Value::Object(entries) = value else {
            return mismatch();
        };
        return entries
            .iter()
            .map(|(key, item)| Ok((key.clone(), convert(item, element, name)?)))
            .collect::<Result<_, _>>()
            .map(Value::Object);
    }

    match (ty, value) {
        ("any", _)
        | ("string", Value::String(_))
        | ("number", Value::Number(_))
        | ("bool", Value::Bool(_)) => Ok(value.clone()),
        _ => mismatch(),
    }
}

/// Parses the HCL literal expressions that plugin schemas use: `true`, `false`, `null`,
/// numbers, quoted strings, and lists and objects of those.
pub fn parse_literal(source: &str) -> Result<Value, SpecError> {
    let mut parser = LiteralParser {
        rest: source.trim(),
    };
    let value = parser.value()?;
    if !parser.rest.trim().is_empty() {
        return error(format!("trailing text in literal {source:?}"));
    }
    Ok(value)
}

struct LiteralParser<'a> {
    rest: &'a str,
}

impl LiteralParser<'_> {
    fn value(&mut self) -> Result<Value, SpecError> {
        self.rest = self.rest.trim_start();
        if let Some(rest) = self.rest.strip_prefix('"') {
            self.rest = rest;
            return self.string();
        }
        if let Some(rest) = self.rest.strip_prefix('[') {
            self.rest = rest;
            return self.list();
        }
        if let Some(rest) = self.rest.strip_prefix('{') {
            self.rest = rest;
            return self.object();
        }

        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')))
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        match word {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            number if number.parse::<f64>().is_ok() => Ok(Value::number(number)),
            other => error(format!("unsupported literal {other:?}")),
        }
    }

    fn string(&mut self) -> Result<Value, SpecError> {
        let mut text = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[index + 1..];
                    return Ok(Value::String(text));
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => text.push('\n'),
                    Some((_, 't')) => text.push('\t'),
                    Some((_, escaped)) => text.push(escaped),
                    None => break,
                },
                c => text.push(c),
            }
        }
        error("unterminated string literal")
    }

    fn list(&mut self) -> Result<Value, SpecError> {
        let mut items = Vec::new();
        loop {
            self.rest = self.rest.trim_start();
            if let Some(rest) = self.rest.strip_prefix(']') {
                self.rest = rest;
                return Ok(Value::List(items));
            }
            items.push(self.value()?);
            self.rest = self.rest.trim_start();
            self.rest = self.rest.strip_prefix(',').unwrap_or(self.rest);
        }
    }

    fn object(&mut self) -> Result<Value, SpecError> {
        let mut entries = BTreeMap::new();
        loop {
            self.rest = self.rest.trim_start();
            if let Some(rest) = self.rest.strip_prefix('}') {
                self.rest = rest;
                return Ok(Value::Object(entries));
            }
            let end = self
                .rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(self.rest.len());
            let (key, rest) = self.rest.split_at(end);
            if key.is_empty() {
                return error("expected an attribute name in object literal");
            }
            let Some(rest) = rest.trim_start().strip_prefix('=') else {
                return error(format!("expected = after {key:?} in object literal"));
            };
            self.rest = rest;
            entries.insert(key.to_owned(), self.value()?);
            self.rest = self.rest.trim_start();
            self.rest = self.rest.strip_prefix(',').unwrap_or(self.rest);
        }
    }
}

fn write_value(bytes: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => bytes.push(0xc0),
        Value::Bool(true) => bytes.push(0xc3),
        Value::Bool(false) => bytes.push(0xc2),
        Value::Number(text) => write_number(bytes, text),
        Value::String(text) => write_string(bytes, text),
        Value::List(items) => {
            write_length(bytes, items.len(), 0x90, 0xdc, 0xdd);
            for item in items {
                write_value(bytes, item);
            }
        }
        Value::Object(entries) => {
            // BTreeMap iterates in byte order of the keys, which is cty's order.
            write_length(bytes, entries.len(), 0x80, 0xde, 0xdf);
            for (key, item) in entries {
                write_string(bytes, key);
                write_value(bytes, item);
            }
        }
    }
}

/// Writes an array or map header: the fix form below 16, then 16-bit and 32-bit forms.
fn write_length(bytes: &mut Vec<u8>, length: usize, fix: u8, form16: u8, form32: u8) {
    if length < 16 {
        bytes.push(fix | length as u8);
    } else if let Ok(length) = u16::try_from(length) {
        bytes.push(form16);
        bytes.extend_from_slice(&length.to_be_bytes());
    } else {
        bytes.push(form32);
        bytes.extend_from_slice(&(length as u32).to_be_bytes());
    }
}

/// Writes a msgpack str: fixstr below 32 bytes, then str8, str16 and str32.
fn write_string(bytes: &mut Vec<u8>, text: &str) {
    let length = text.len();
    if length < 32 {
        bytes.push(0xa0 | length as u8);
    } else if let Ok(length) = u8::try_from(length) {
        bytes.extend_from_slice(&[0xd9, length]);
    } else if let Ok(length) = u16::try_from(length) {
        bytes.push(0xda);
        bytes.extend_from_slice(&length.to_be_bytes());
    } else {
        bytes.push(0xdb);
        bytes.extend_from_slice(&(length as u32).to_be_bytes());
    }
    bytes.extend_from_slice(text.as_bytes());
}

fn write_number(bytes: &mut Vec<u8>, text: &str) {
    let decimal =
        Decimal::parse(text).unwrap_or_else(|| panic!("{text:?} is not a decimal number"));

    if let Some(integer) = decimal.as_i64() {
        write_integer(bytes, integer);
    } else if let Some(float) = decimal.as_exact_f64() {
        bytes.push(0xcb);
        bytes.extend_from_slice(&float.to_bits().to_be_bytes());
    } else {
        write_string(bytes, &decimal.to_string());
    }
}

/// Writes the smallest integer form, unsigned forms for non-negative values, as
/// vmihailenco/msgpack's compact integer encoding does.
fn write_integer(bytes: &mut Vec<u8>, value: i64) {
    match value {
        0..=0x7f => bytes.push(value as u8),
        0x80..=0xff => bytes.extend_from_slice(&[0xcc, value as u8]),
        0x100..=0xffff => {
            bytes.push(0xcd);
            bytes.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            bytes.push(0xce);
            bytes.extend_from_slice(&(value as u32).to_be_bytes());
        }
        0x1_0000_0000.. => {
            bytes.push(0xcf);
            bytes.extend_from_slice(&(value as u64).to_be_bytes());
        }
        -32..=-1 => bytes.push(value as i8 as u8),
        -128..=-33 => bytes.extend_from_slice(&[0xd0, value as i8 as u8]),
        -32_768..=-129 => {
            bytes.push(0xd1);
            bytes.extend_from_slice(&(value as i16).to_be_bytes());
        }
        -2_147_483_648..=-32_769 => {
            bytes.push(0xd2);
            bytes.extend_from_slice(&(value as i32).to_be_bytes());
        }
        _ => {
            bytes.push(0xd3);
            bytes.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// A decimal number `digits / 10^scale` with its sign, normalised so that `digits` has
/// no trailing zero digit when `scale` > 0. Limited to 38 significant digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: u128,
    scale: u32,
}

impl Decimal {
    fn parse(text: &str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
        {
            return None;
        }

        let mut digits: u128 = format!("{whole}{fraction}").parse().ok()?;
        let mut scale = fraction.len() as u32;
        while scale > 0 && digits.is_multiple_of(10) {
            digits /= 10;
            scale -= 1;
        }
        Some(Self {
            negative: negative && digits != 0,
            digits,
            scale,
        })
    }

    fn as_i64(&self) -> Option<i64> {
        if self.scale != 0 {
            return None;
        }
        let magnitude = i128::try_from(self.digits).ok()?;
        i64::try_from(if self.negative { -magnitude } else { magnitude }).ok()
    }

    /// Returns the float64 equal to this number, if one exists. `digits / 10^scale` is
    /// `digits / 5^scale / 2^scale`, so it is a binary fraction only when 5^scale divides
    /// `digits`, and float64 represents it exactly when the quotient fits the 53-bit significand.
    fn as_exact_f64(&self) -> Option<f64> {
        let power_of_five = 5u128.checked_pow(self.scale)?;
        if !self.digits.is_multiple_of(power_of_five) {
            return None;
        }
        let significand = self.digits / power_of_five;
        if significand >= 1 << 53 {
            return None;
        }
        let magnitude = significand as f64 / 2f64.powi(self.scale as i32);
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = format!("{:0>width$}", self.digits, width = self.scale as usize + 1);
        let (whole, fraction) = digits.split_at(digits.len() - self.scale as usize);
        let sign = if self.negative { "-" } else { "" };
        if fraction.is_empty() {
            write!(formatter, "{sign}{whole}")
        } else {
            write!(formatter, "{sign}{whole}.{fraction}")
        }
    }
}

/// Builders for hclspec trees in tests, named after the spec kinds.
pub mod spec {
    use styx_driver::proto::hclspec::{self, Spec, spec::Block as Kind};

    fn node(kind: Kind) -> Spec {
        Spec { block: Some(kind) }
    }

    pub fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Spec)>) -> Spec {
        let attributes = attributes
            .into_iter()
            .map(|(name, spec)| (name.to_owned(), spec))
            .collect();
        node(Kind::Object(hclspec::Object { attributes }))
    }

    /// Builds an `Attr` without a name, so it takes its key in the enclosing object.
    pub fn attr(ty: &str, required: bool) -> Spec {
        named_attr("", ty, required)
    }

    pub fn named_attr(name: &str, ty: &str, required: bool) -> Spec {
        node(Kind::Attr(hclspec::Attr {
            name: name.to_owned(),
            r#type: ty.to_owned(),
            required,
        }))
    }

    pub fn default(primary: Spec, fallback: Spec) -> Spec {
        node(Kind::Default(Box::new(hclspec::Default {
            primary: Some(Box::new(primary)),
            default: Some(Box::new(fallback)),
        })))
    }

    pub fn literal(source: &str) -> Spec {
        node(Kind::Literal(hclspec::Literal {
            value: source.to_owned(),
        }))
    }

    pub fn block(nested: Spec) -> Spec {
        node(Kind::BlockValue(Box::new(hclspec::Block {
            name: String::new(),
            required: false,
            nested: Some(Box::new(nested)),
        })))
    }

    pub fn block_list(nested: Spec) -> Spec {
        node(Kind::BlockList(Box::new(hclspec::BlockList {
            name: String::new(),
            min_items: 0,
            max_items: 0,
            nested: Some(Box::new(nested)),
        })))
    }

    pub fn block_attrs(ty: &str) -> Spec {
        node(Kind::BlockAttrs(hclspec::BlockAttrs {
            name: String::new(),
            r#type: ty.to_owned(),
            required: false,
        }))
    }
}
