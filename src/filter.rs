//! `FilterCriteria`: EventBridge patterns matched against each record (SPEC section 7).
//!
//! A record passes when it matches any of the mapping's patterns (at most 5); with no patterns every record
//! passes. Records that match none are not sent, count as processed, and are committed.
//!
//! # What a pattern sees
//!
//! Each record is matched as if it were this JSON object (the record as it appears in the event, with the
//! key, value and headers decoded):
//!
//! ```json
//! { "topic": "orders", "partition": 0, "offset": 15, "timestamp": 1545084650987,
//!   "timestampType": "CREATE_TIME", "key": ..., "value": ..., "headers": { "name": "text", ... } }
//! ```
//!
//! - `value` and `key`: bytes that are valid JSON are matched as that JSON (an object is matched field by
//!   field with a nested pattern, `{"value": {"orderType": ["Premium"]}}`; a JSON string, number, boolean or
//!   null is the value itself, so the key `123` matches `[123]`, not `["123"]`). UTF-8 text that is not JSON
//!   is one plain string: it matches string patterns (`[{"prefix": "ERR"}]`) and never a nested pattern.
//!   Bytes that are not UTF-8 match no pattern on that field, `exists` included; a pattern naming only
//!   metadata still matches such a record. A record without a value (a tombstone) has `"value": null`, as in
//!   the event: `{"value": [null]}` selects tombstones.
//! - `headers`: an object from header name to its value as a UTF-8 string, never decoded as JSON:
//!   `{"headers": {"source": ["billing"]}}`. A name that occurs more than once matches when any of its values
//!   does. A header whose value is not UTF-8 is seen by `exists` only.
//! - Any other name at the top level is rejected when the pattern is parsed: a misspelled field would
//!   otherwise filter out, and commit, every record.
//!
//! # Matching rules (EventBridge's)
//!
//! Fields of an object pattern must all match (AND); the values in a field's array are alternatives (OR);
//! `$or` takes two or more objects of which one must match. When the record holds an array, the pattern
//! matches if any element does. Operators: exact values, `prefix`, `suffix` (both also with
//! `{"equals-ignore-case": ...}`), `equals-ignore-case`, `wildcard`, `anything-but` (a value, a list, or
//! `{"prefix" | "suffix" | "equals-ignore-case" | "wildcard": ...}`), `numeric`, `exists` and `cidr`.
//! `numeric` matches JSON numbers only, never numeric-looking strings. `exists` looks at leaves: a field
//! holding an object or an empty array does not exist for it. `anything-but` needs the field to be present,
//! and matches any value of another type than the excluded ones.
//!
//! Deliberate differences from EventBridge, all accepting more, none matching differently within its
//! limits: numbers compare as `f64` (exact for integers up to 2^53), without its ±5e9 range and 6-decimal
//! limit, so `timestamp` and `offset` ranges work; `cidr` accepts `/32` and `/128`. The one stricter rule is
//! the record-field check above.

use std::cell::OnceCell;
use std::net::IpAddr;

use serde_json::{Map, Number, Value};

use crate::config::{quote, FilterCriteria};
use crate::kafka::{Record, TimestampType};

/// AWS allows at most this many patterns per mapping.
pub const MAX_PATTERNS: usize = 5;

/// AWS's limit on a pattern's length (the `Filter.Pattern` API constraint), in characters.
pub const MAX_PATTERN_CHARS: usize = 4096;

/// The top-level names a pattern may use: the fields of a record in the event.
const RECORD_FIELDS: [&str; 8] =
    ["topic", "partition", "offset", "timestamp", "timestampType", "key", "value", "headers"];

/// The operators a match expression may use.
const OPERATORS: &str = "prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists, cidr";

/// A pattern that is not valid EventBridge syntax, or more patterns than AWS allows.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The pattern text is not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The pattern is longer than AWS accepts.
    #[error("{0} characters long; allowed at most {MAX_PATTERN_CHARS}")]
    TooLong(usize),
    /// The JSON is not a valid pattern; `path` says where (`$.value.orderType`).
    #[error("at {path}: {problem}")]
    Invalid {
        /// Where in the pattern, as `$.field.field[index]`.
        path: String,
        /// What is wrong, quoting the offending JSON.
        problem: String,
    },
    /// More patterns than AWS allows.
    #[error("{0} patterns given; allowed at most {MAX_PATTERNS}")]
    TooMany(usize),
}

/// A JSON value for an error message: its compact JSON (already escaped), cut like [`quote`] cuts strings.
fn short(value: &Value) -> String {
    let text = value.to_string();
    let count = text.chars().count();
    if count <= crate::config::QUOTED_CHARS {
        text
    } else {
        let prefix: String = text.chars().take(crate::config::QUOTED_CHARS).collect();
        format!("{prefix}... ({count} characters)")
    }
}

/// Builds a [`PatternError::Invalid`].
fn invalid<T>(path: &str, problem: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError::Invalid { path: path.to_string(), problem: problem.into() })
}

/// The patterns of one mapping, parsed once and matched against every polled record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    patterns: Vec<Pattern>,
}

impl Filters {
    /// Parses a mapping's `FilterCriteria`; none, or an empty `Filters` list, lets every record pass.
    pub fn new(criteria: Option<&FilterCriteria>) -> Result<Self, PatternError> {
        let Some(criteria) = criteria else { return Ok(Self::default()) };
        if criteria.filters.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany(criteria.filters.len()));
        }
        let patterns = criteria.filters.iter().map(|f| Pattern::parse(&f.pattern)).collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether the record is to be delivered: it matches any pattern, or there are none.
    pub fn matches(&self, record: &Record) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        // One view for all patterns, so the key and value are decoded at most once, and only when a
        // pattern looks at them.
        let view = RecordView::new(record);
        self.patterns.iter().any(|p| p.root.matches(&Container::Record(&view)))
    }
}

/// A parsed filter pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    root: ObjectPattern,
}

impl Pattern {
    /// Parses a pattern given as a JSON string, rejecting what EventBridge rejects (and top-level names that
    /// are not record fields).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let chars = text.chars().count();
        if chars > MAX_PATTERN_CHARS {
            return Err(PatternError::TooLong(chars));
        }
        let raw: Value = serde_json::from_str(text)?;
        let Value::Object(map) = &raw else {
            return invalid("$", format!("a pattern must be a JSON object, got {}", short(&raw)));
        };
        Ok(Self { root: ObjectPattern::compile(map, "$", true)? })
    }
}

/// An object in a pattern: every field must match, and one alternative of every `$or`.
#[derive(Debug, Clone, PartialEq)]
struct ObjectPattern {
    fields: Vec<(String, FieldPattern)>,
    any_of: Vec<Vec<ObjectPattern>>,
}

/// What a pattern says about one field.
#[derive(Debug, Clone, PartialEq)]
enum FieldPattern {
    /// `{"field": {...}}`: the field holds an object matching this.
    Nested(ObjectPattern),
    /// `{"field": [...]}`: one of these matches a value of the field.
    Leaf(Vec<Matcher>),
}

/// One element of a field's array.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Exact(Exact),
    Prefix(String),
    /// Lower-cased.
    PrefixIgnoreCase(String),
    Suffix(String),
    /// Lower-cased.
    SuffixIgnoreCase(String),
    /// Lower-cased.
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
}

/// An exact value; strings never equal numbers, and `null` never equals `""`.
#[derive(Debug, Clone, PartialEq)]
enum Exact {
    Str(String),
    Num(Num),
    Bool(bool),
    Null,
}

/// A JSON number: integers compare exactly, everything else as `f64`, so `5` equals `5.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Num {
    float: f64,
    int: Option<i128>,
}

impl Num {
    fn of(n: &Number) -> Self {
        let int = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
        // Without serde_json's arbitrary_precision, every number has an f64 form.
        Self { float: n.as_f64().unwrap_or(f64::NAN), int }
    }

    fn int(i: i64) -> Self {
        Self { float: i as f64, int: Some(i128::from(i)) }
    }

    fn equals(self, other: Num) -> bool {
        match (self.int, other.int) {
            (Some(a), Some(b)) => a == b,
            _ => self.float == other.float,
        }
    }
}

/// `anything-but`: matches any present value that is not excluded; values of another type are never
/// excluded (EventBridge: `{"anything-but": "x"}` matches the number 5).
#[derive(Debug, Clone, PartialEq)]
enum AnythingBut {
    Strings(Vec<String>),
    Numbers(Vec<Num>),
    Prefixes(Vec<String>),
    Suffixes(Vec<String>),
    /// Lower-cased.
    IgnoreCase(Vec<String>),
    Wildcards(Vec<Wildcard>),
}

/// A numeric range; `=` is a range with equal inclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Range {
    low: Option<Bound>,
    high: Option<Bound>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    value: f64,
    inclusive: bool,
}

/// A wildcard pattern as the literal pieces between its `*`s (one piece: no `*`).
#[derive(Debug, Clone, PartialEq)]
struct Wildcard {
    pieces: Vec<String>,
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl ObjectPattern {
    /// `record_level`: the object's names are record fields (the top level, and `$or` objects there).
    fn compile(map: &Map<String, Value>, path: &str, record_level: bool) -> Result<Self, PatternError> {
        if map.is_empty() {
            return invalid(path, "empty objects are not allowed");
        }
        let mut fields = Vec::new();
        let mut any_of = Vec::new();
        for (name, value) in map {
            if name == "$or" {
                any_of.push(compile_or(value, path, record_level)?);
                continue;
            }
            let field_path = format!("{path}.{name}");
            if record_level && !RECORD_FIELDS.contains(&name.as_str()) {
                return invalid(
                    &field_path,
                    format!("{} is not a record field; allowed: {}", quote(name), RECORD_FIELDS.join(", ")),
                );
            }
            let field = match value {
                Value::Object(inner) => FieldPattern::Nested(Self::compile(inner, &field_path, false)?),
                Value::Array(items) => FieldPattern::Leaf(compile_leaf(items, &field_path)?),
                other => return invalid(&field_path, format!("{} must be inside an array, as [{}]", short(other), short(other))),
            };
            fields.push((name.clone(), field));
        }
        Ok(Self { fields, any_of })
    }

    fn matches(&self, container: &Container<'_, '_>) -> bool {
        self.fields.iter().all(|(name, field)| field.matches(container.get(name)))
            && self.any_of.iter().all(|alternatives| alternatives.iter().any(|o| o.matches(container)))
    }
}

/// `"$or": [{...}, {...}, ...]`, at least two objects.
fn compile_or(value: &Value, path: &str, record_level: bool) -> Result<Vec<ObjectPattern>, PatternError> {
    let or_path = format!("{path}.$or");
    let items = match value {
        Value::Array(items) if items.len() >= 2 => items,
        other => return invalid(&or_path, format!("\"$or\" takes an array of at least two objects, got {}", short(other))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(map) => ObjectPattern::compile(map, &format!("{or_path}[{i}]"), record_level),
            other => invalid(&or_path, format!("\"$or\" takes objects only, got {}", short(other))),
        })
        .collect()
}

/// A field's array of alternatives.
fn compile_leaf(items: &[Value], path: &str) -> Result<Vec<Matcher>, PatternError> {
    if items.is_empty() {
        return invalid(path, "empty arrays are not allowed");
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_path = format!("{path}[{i}]");
            Ok(match item {
                Value::String(s) => Matcher::Exact(Exact::Str(s.clone())),
                Value::Number(n) => Matcher::Exact(Exact::Num(Num::of(n))),
                Value::Bool(b) => Matcher::Exact(Exact::Bool(*b)),
                Value::Null => Matcher::Exact(Exact::Null),
                Value::Object(expression) => compile_expression(expression, &item_path)?,
                Value::Array(_) => return invalid(
                    &item_path,
                    format!(
                        "{} is not a match value; use a string, number, true, false, null or an operator object",
                        short(item)
                    ),
                ),
            })
        })
        .collect()
}

/// A match expression: `{"operator": argument}`.
fn compile_expression(expression: &Map<String, Value>, path: &str) -> Result<Matcher, PatternError> {
    let mut entries = expression.iter();
    let (Some((operator, argument)), None) = (entries.next(), entries.next()) else {
        return invalid(
            path,
            format!("a match expression takes exactly one operator, got {}", short(&Value::from(expression.clone()))),
        );
    };
    let string_argument = || match argument {
        Value::String(s) => Ok(s.clone()),
        other => invalid(path, format!("\"{operator}\" takes a string, got {}", short(other))),
    };
    Ok(match operator.as_str() {
        "prefix" => match ignore_case_argument(argument, operator, path)? {
            Some(lowered) => Matcher::PrefixIgnoreCase(lowered),
            None => Matcher::Prefix(string_argument()?),
        },
        "suffix" => match ignore_case_argument(argument, operator, path)? {
            Some(lowered) => Matcher::SuffixIgnoreCase(lowered),
            None => Matcher::Suffix(string_argument()?),
        },
        "equals-ignore-case" => Matcher::EqualsIgnoreCase(string_argument()?.to_lowercase()),
        "wildcard" => Matcher::Wildcard(Wildcard::parse(&string_argument()?, path)?),
        "anything-but" => Matcher::AnythingBut(compile_anything_but(argument, path)?),
        "numeric" => Matcher::Numeric(compile_range(argument, path)?),
        "exists" => match argument {
            Value::Bool(b) => Matcher::Exists(*b),
            other => return invalid(path, format!("\"exists\" takes true or false, got {}", short(other))),
        },
        "cidr" => Matcher::Cidr(Cidr::parse(&string_argument()?, path)?),
        unknown => return invalid(path, format!("unknown operator {}; allowed: {OPERATORS}", quote(unknown))),
    })
}

/// `{"prefix": {"equals-ignore-case": "x"}}` gives `Some("x")`; a plain argument gives `None`.
fn ignore_case_argument(argument: &Value, operator: &str, path: &str) -> Result<Option<String>, PatternError> {
    let Value::Object(inner) = argument else { return Ok(None) };
    match inner.iter().next() {
        Some((name, Value::String(s))) if inner.len() == 1 && name == "equals-ignore-case" => {
            Ok(Some(s.to_lowercase()))
        }
        _ => invalid(
            path,
            format!("\"{operator}\" takes a string or {{\"equals-ignore-case\": string}}, got {}", short(argument)),
        ),
    }
}

fn compile_anything_but(argument: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    let bad = |what: &str| PatternError::Invalid {
        path: path.to_string(),
        problem: format!("\"anything-but\" {what}, got {}", short(argument)),
    };
    match argument {
        Value::String(s) => Ok(AnythingBut::Strings(vec![s.clone()])),
        Value::Number(n) => Ok(AnythingBut::Numbers(vec![Num::of(n)])),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Ok(AnythingBut::Strings(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Ok(AnythingBut::Numbers(items.iter().filter_map(|v| v.as_number().map(Num::of)).collect()))
        }
        Value::Array(_) => Err(bad("takes a non-empty list of only strings or only numbers")),
        Value::Object(inner) if inner.len() == 1 => {
            let (operator, values) = inner.iter().next().expect("one entry");
            let strings = || match values {
                Value::String(s) => Ok(vec![s.clone()]),
                Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                    Ok(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                }
                _ => Err(bad(&format!("with \"{operator}\" takes a string or a non-empty list of strings"))),
            };
            match operator.as_str() {
                "prefix" | "suffix" => {
                    let strings = strings()?;
                    if strings.iter().any(String::is_empty) {
                        Err(bad(&format!("with \"{operator}\" does not take an empty string")))
                    } else if operator == "prefix" {
                        Ok(AnythingBut::Prefixes(strings))
                    } else {
                        Ok(AnythingBut::Suffixes(strings))
                    }
                }
                "equals-ignore-case" => {
                    Ok(AnythingBut::IgnoreCase(strings()?.iter().map(|s| s.to_lowercase()).collect()))
                }
                "wildcard" => Ok(AnythingBut::Wildcards(
                    strings()?.iter().map(|s| Wildcard::parse(s, path)).collect::<Result<_, _>>()?,
                )),
                _ => Err(bad("takes prefix, suffix, equals-ignore-case or wildcard as an operator")),
            }
        }
        _ => Err(bad("takes a string, a number, a list, or one of prefix, suffix, equals-ignore-case, wildcard")),
    }
}

/// `["=", 5]`, `[">", 0]`, `[">=", 0, "<", 10]`, `["<=", 10]`: a lower bound may be followed by an upper one.
fn compile_range(argument: &Value, path: &str) -> Result<Range, PatternError> {
    let bad = |why: &str| PatternError::Invalid {
        path: path.to_string(),
        problem: format!("\"numeric\" {why}, got {}", short(argument)),
    };
    let Value::Array(items) = argument else { return Err(bad("takes an array such as [\">\", 0, \"<=\", 5]")) };
    let bound = |i: usize| -> Result<(&str, f64), PatternError> {
        match (items.get(i).and_then(Value::as_str), items.get(i + 1).and_then(Value::as_f64)) {
            (Some(op), Some(value)) => Ok((op, value)),
            (None, _) => Err(bad(&format!("expects an operator (=, <, <=, >, >=) at position {i}"))),
            (Some(op), None) => Err(bad(&format!("expects a number after {op:?}"))),
        }
    };
    let (op, value) = bound(0)?;
    let (range, used) = match op {
        "=" => (Range { low: Some(Bound { value, inclusive: true }), high: Some(Bound { value, inclusive: true }) }, 2),
        "<" | "<=" => (Range { low: None, high: Some(Bound { value, inclusive: op == "<=" }) }, 2),
        ">" | ">=" => {
            let low = Some(Bound { value, inclusive: op == ">=" });
            if items.len() == 2 {
                (Range { low, high: None }, 2)
            } else {
                let (top_op, top) = bound(2)?;
                if !matches!(top_op, "<" | "<=") {
                    return Err(bad(&format!("takes only \"<\" or \"<=\" after a lower bound, not {top_op:?}")));
                }
                if value >= top {
                    return Err(bad(&format!("needs the lower bound {value} below the upper bound {top}")));
                }
                (Range { low, high: Some(Bound { value: top, inclusive: top_op == "<=" }) }, 4)
            }
        }
        other => return Err(bad(&format!("has an unknown operator {other:?}; allowed =, <, <=, >, >="))),
    };
    if items.len() != used {
        return Err(bad("has too many elements"));
    }
    Ok(range)
}

impl Wildcard {
    /// EventBridge's syntax: `*` matches any run of characters, `\*` a star, `\\` a backslash; no `**`.
    fn parse(text: &str, path: &str) -> Result<Self, PatternError> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars();
        let mut after_star = false;
        while let Some(c) = chars.next() {
            let literal = match c {
                '*' if after_star => {
                    return invalid(path, format!("wildcard {} has consecutive wildcard characters", quote(text)));
                }
                '*' => {
                    pieces.push(String::new());
                    after_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => escaped,
                    _ => {
                        return invalid(
                            path,
                            format!("wildcard {} has a backslash that escapes neither * nor \\", quote(text)),
                        )
                    }
                },
                other => other,
            };
            pieces.last_mut().expect("never empty").push(literal);
            after_star = false;
        }
        Ok(Self { pieces })
    }

    fn matches(&self, s: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("never empty");
        let Some((last, middle)) = rest.split_last() else { return s == first };
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
            return false;
        }
        // Taking each middle piece at its leftmost place leaves the most room for the next, so this greedy
        // search finds a match whenever one exists.
        let mut rest = &s[first.len()..s.len() - last.len()];
        for piece in middle {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Cidr {
    fn parse(text: &str, path: &str) -> Result<Self, PatternError> {
        let parsed =
            text.split_once('/').and_then(|(ip, bits)| Some((ip.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?)));
        match parsed {
            Some((network, bits)) if bits <= if network.is_ipv4() { 32 } else { 128 } => Ok(Self { network, bits }),
            _ => invalid(path, format!("{} is not a CIDR block such as \"10.0.0.0/24\" or \"2001:db8::/32\"", quote(text))),
        }
    }

    fn contains(&self, s: &str) -> bool {
        let Ok(ip) = s.parse::<IpAddr>() else { return false };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One scalar the record holds at a field.
#[derive(Debug, Clone, Copy)]
enum Leaf<'a> {
    Str(&'a str),
    Num(Num),
    Bool(bool),
    Null,
}

impl Matcher {
    /// Whether this matches one scalar; `exists` is decided on the whole field, not here.
    fn matches(&self, leaf: Leaf<'_>) -> bool {
        match (self, leaf) {
            (Matcher::Exact(exact), leaf) => match (exact, leaf) {
                (Exact::Str(want), Leaf::Str(s)) => want == s,
                (Exact::Num(want), Leaf::Num(n)) => want.equals(n),
                (Exact::Bool(want), Leaf::Bool(b)) => *want == b,
                (Exact::Null, Leaf::Null) => true,
                _ => false,
            },
            (Matcher::AnythingBut(excluded), leaf) => !excluded.excludes(leaf),
            (Matcher::Numeric(range), Leaf::Num(n)) => range.contains(n.float),
            (Matcher::Exists(_), _) => false,
            (matcher, Leaf::Str(s)) => match matcher {
                Matcher::Prefix(p) => s.starts_with(p.as_str()),
                Matcher::PrefixIgnoreCase(p) => s.to_lowercase().starts_with(p.as_str()),
                Matcher::Suffix(p) => s.ends_with(p.as_str()),
                Matcher::SuffixIgnoreCase(p) => s.to_lowercase().ends_with(p.as_str()),
                Matcher::EqualsIgnoreCase(p) => s.to_lowercase() == *p,
                Matcher::Wildcard(w) => w.matches(s),
                Matcher::Cidr(c) => c.contains(s),
                _ => false,
            },
            // String operators on numbers, booleans and null; numeric on anything but numbers.
            _ => false,
        }
    }
}

impl AnythingBut {
    fn excludes(&self, leaf: Leaf<'_>) -> bool {
        match (self, leaf) {
            (AnythingBut::Numbers(values), Leaf::Num(n)) => values.iter().any(|v| v.equals(n)),
            (AnythingBut::Numbers(_), _) => false,
            (_, Leaf::Str(s)) => match self {
                AnythingBut::Strings(values) => values.iter().any(|v| v == s),
                AnythingBut::Prefixes(values) => values.iter().any(|v| s.starts_with(v.as_str())),
                AnythingBut::Suffixes(values) => values.iter().any(|v| s.ends_with(v.as_str())),
                AnythingBut::IgnoreCase(values) => values.contains(&s.to_lowercase()),
                AnythingBut::Wildcards(values) => values.iter().any(|w| w.matches(s)),
                AnythingBut::Numbers(_) => false,
            },
            _ => false,
        }
    }
}

impl Range {
    fn contains(&self, x: f64) -> bool {
        let above = self.low.is_none_or(|b| if b.inclusive { x >= b.value } else { x > b.value });
        let below = self.high.is_none_or(|b| if b.inclusive { x <= b.value } else { x < b.value });
        above && below
    }
}

/// What the record holds at one field, as a pattern sees it.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    /// No such field.
    Missing,
    /// Decoded JSON.
    Json(&'a Value),
    /// Metadata text, header text, or a key or value that is UTF-8 but not JSON: one string, and nested
    /// patterns never match it.
    Text(&'a str),
    /// Integer metadata.
    Int(i64),
    /// A key or value that is not UTF-8: no pattern on it matches.
    Binary,
    /// The record's headers, an object.
    Headers(&'a [(String, Vec<u8>)]),
    /// The values of every header with this name.
    Header(&'a [(String, Vec<u8>)], &'a str),
}

impl FieldPattern {
    fn matches(&self, slot: Slot<'_>) -> bool {
        match self {
            FieldPattern::Leaf(matchers) => {
                if matches!(slot, Slot::Binary) {
                    return false;
                }
                matchers.iter().any(|m| match m {
                    Matcher::Exists(wanted) => slot.exists() == *wanted,
                    m => slot.any_leaf(&mut |leaf| m.matches(leaf)),
                })
            }
            FieldPattern::Nested(object) => match slot {
                Slot::Json(Value::Object(map)) => object.matches(&Container::Json(map)),
                Slot::Json(Value::Array(items)) if !items.is_empty() => {
                    items.iter().any(|item| self.matches(Slot::Json(item)))
                }
                // EventBridge looks at leaves: below a scalar, an empty array or nothing, every field is
                // missing, so only `exists: false` can hold there.
                Slot::Json(_) | Slot::Missing => object.matches(&Container::Empty),
                Slot::Headers(headers) => object.matches(&Container::Headers(headers)),
                Slot::Text(_) | Slot::Int(_) | Slot::Binary | Slot::Header(..) => false,
            },
        }
    }
}

impl<'a> Slot<'a> {
    /// `exists` in EventBridge's sense: the field holds at least one leaf.
    fn exists(self) -> bool {
        match self {
            Slot::Missing | Slot::Binary | Slot::Headers(_) => false,
            Slot::Json(value) => json_has_leaf(value),
            Slot::Text(_) | Slot::Int(_) => true,
            Slot::Header(headers, name) => headers.iter().any(|(n, _)| n == name),
        }
    }

    /// Whether `f` holds for any scalar at this field; an array's elements are its scalars.
    fn any_leaf(self, f: &mut dyn FnMut(Leaf<'a>) -> bool) -> bool {
        match self {
            Slot::Missing | Slot::Binary | Slot::Headers(_) => false,
            Slot::Json(value) => any_json_leaf(value, f),
            Slot::Text(s) => f(Leaf::Str(s)),
            Slot::Int(i) => f(Leaf::Num(Num::int(i))),
            Slot::Header(headers, name) => headers
                .iter()
                .filter(|(n, _)| n == name)
                .filter_map(|(_, bytes)| std::str::from_utf8(bytes).ok())
                .any(|s| f(Leaf::Str(s))),
        }
    }
}

fn json_has_leaf(value: &Value) -> bool {
    match value {
        Value::Object(_) => false,
        Value::Array(items) => items.iter().any(json_has_leaf),
        _ => true,
    }
}

fn any_json_leaf<'a>(value: &'a Value, f: &mut dyn FnMut(Leaf<'a>) -> bool) -> bool {
    match value {
        Value::String(s) => f(Leaf::Str(s)),
        Value::Number(n) => f(Leaf::Num(Num::of(n))),
        Value::Bool(b) => f(Leaf::Bool(*b)),
        Value::Null => f(Leaf::Null),
        Value::Array(items) => items.iter().any(|item| any_json_leaf(item, f)),
        Value::Object(_) => false,
    }
}

/// Something with named fields a pattern object is matched against.
enum Container<'a, 'r> {
    Record(&'a RecordView<'r>),
    Json(&'a Map<String, Value>),
    Headers(&'a [(String, Vec<u8>)]),
    /// Below a scalar or a missing field: nothing is there.
    Empty,
}

impl<'a> Container<'a, '_> {
    fn get(&self, name: &'a str) -> Slot<'a> {
        match self {
            Container::Record(view) => view.get(name),
            Container::Json(map) => map.get(name).map_or(Slot::Missing, Slot::Json),
            Container::Headers(headers) => Slot::Header(headers, name),
            Container::Empty => Slot::Missing,
        }
    }
}

/// A record as patterns see it, decoding the key and value on first use.
struct RecordView<'r> {
    record: &'r Record,
    key: OnceCell<Decoded<'r>>,
    value: OnceCell<Decoded<'r>>,
}

/// A decoded key or value.
enum Decoded<'r> {
    Json(Value),
    Text(&'r str),
    Binary,
}

impl<'r> Decoded<'r> {
    fn of(bytes: Option<&'r [u8]>) -> Self {
        // The event carries `null` for a record without a key or value.
        let Some(bytes) = bytes else { return Decoded::Json(Value::Null) };
        match std::str::from_utf8(bytes) {
            Err(_) => Decoded::Binary,
            Ok(text) => serde_json::from_str(text).map_or(Decoded::Text(text), Decoded::Json),
        }
    }

    fn slot(&self) -> Slot<'_> {
        match self {
            Decoded::Json(value) => Slot::Json(value),
            Decoded::Text(text) => Slot::Text(text),
            Decoded::Binary => Slot::Binary,
        }
    }
}

impl<'r> RecordView<'r> {
    fn new(record: &'r Record) -> Self {
        Self { record, key: OnceCell::new(), value: OnceCell::new() }
    }

    fn get<'a>(&'a self, name: &str) -> Slot<'a> {
        let record = self.record;
        match name {
            "topic" => Slot::Text(&record.key_partition.topic),
            "partition" => Slot::Int(i64::from(record.key_partition.partition)),
            "offset" => Slot::Int(record.offset),
            "timestamp" => Slot::Int(record.timestamp_ms),
            "timestampType" => Slot::Text(match record.timestamp_type {
                TimestampType::CreateTime => "CREATE_TIME",
                TimestampType::LogAppendTime => "LOG_APPEND_TIME",
            }),
            "key" => self.key.get_or_init(|| Decoded::of(record.key.as_deref())).slot(),
            "value" => self.value.get_or_init(|| Decoded::of(record.value.as_deref())).slot(),
            "headers" => Slot::Headers(&record.headers),
            // Pattern::parse admits record fields only.
            _ => Slot::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;
    use crate::kafka::PartitionKey;

    type Header<'a> = (&'a str, &'a [u8]);

    fn record(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header<'_>]) -> Record {
        Record::new(
            PartitionKey::new("orders", 3),
            42,
            1_700_000_000_000,
            TimestampType::CreateTime,
            key.map(<[u8]>::to_vec),
            value.map(<[u8]>::to_vec),
            headers.iter().map(|(name, bytes)| (name.to_string(), bytes.to_vec())).collect(),
        )
    }

    fn value_record(value: &str) -> Record {
        record(None, Some(value.as_bytes()), &[])
    }

    fn filters(patterns: &[&str]) -> Result<Filters, PatternError> {
        let criteria = FilterCriteria { filters: patterns.iter().map(|p| Filter { pattern: p.to_string() }).collect() };
        Filters::new(Some(&criteria))
    }

    /// Each case is (pattern, record, expected); every mismatch is reported at once.
    fn assert_record_cases(cases: &[(&str, &Record, bool)]) -> Result<(), PatternError> {
        let mut wrong = Vec::new();
        for (pattern, record, expected) in cases {
            if filters(&[pattern])?.matches(record) != *expected {
                wrong.push(format!("{pattern} on {record:?}: expected {expected}"));
            }
        }
        assert!(wrong.is_empty(), "mismatches: {wrong:#?}");
        Ok(())
    }

    /// Each case is (pattern, record value as UTF-8 text, expected).
    fn assert_value_cases(cases: &[(&str, &str, bool)]) -> Result<(), PatternError> {
        let records: Vec<Record> = cases.iter().map(|(_, value, _)| value_record(value)).collect();
        let cases: Vec<(&str, &Record, bool)> =
            cases.iter().zip(&records).map(|((pattern, _, expected), record)| (*pattern, record, *expected)).collect();
        assert_record_cases(&cases)
    }

    #[test]
    fn exact_values_match_strings_numbers_booleans_and_null() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": {"orderType": ["Premium"]}}"#, r#"{"orderType": "Premium"}"#, true),
            (r#"{"value": {"orderType": ["Premium"]}}"#, r#"{"orderType": "Basic"}"#, false),
            (r#"{"value": {"orderType": ["Premium"]}}"#, r#"{"other": "Premium"}"#, false),
            (r#"{"value": {"orderType": ["Premium"]}}"#, r#"{"orderType": "premium"}"#, false),
            (r#"{"value": {"orderType": ["Basic", "Premium"]}}"#, r#"{"orderType": "Premium"}"#, true),
            (r#"{"value": {"n": [5]}}"#, r#"{"n": 5}"#, true),
            (r#"{"value": {"n": [5]}}"#, r#"{"n": 5.0}"#, true),
            (r#"{"value": {"n": [5]}}"#, r#"{"n": 6}"#, false),
            (r#"{"value": {"n": [5]}}"#, r#"{"n": "5"}"#, false),
            (r#"{"value": {"n": ["5"]}}"#, r#"{"n": 5}"#, false),
            (r#"{"value": {"n": [9007199254740993]}}"#, r#"{"n": 9007199254740992}"#, false),
            (r#"{"value": {"b": [true]}}"#, r#"{"b": true}"#, true),
            (r#"{"value": {"b": [true]}}"#, r#"{"b": "true"}"#, false),
            (r#"{"value": {"x": [null]}}"#, r#"{"x": null}"#, true),
            (r#"{"value": {"x": [null]}}"#, r#"{"x": ""}"#, false),
            (r#"{"value": {"x": [null]}}"#, r#"{}"#, false),
            (r#"{"value": {"x": [""]}}"#, r#"{"x": ""}"#, true),
            (r#"{"value": {"x": [""]}}"#, r#"{"x": null}"#, false),
        ])
    }

    #[test]
    fn objects_and_fields_and_arrays_or() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": {"a": ["1"], "b": ["2"]}}"#, r#"{"a": "1", "b": "2"}"#, true),
            (r#"{"value": {"a": ["1"], "b": ["2"]}}"#, r#"{"a": "1", "b": "3"}"#, false),
            (r#"{"value": {"a": ["1"], "b": ["2"]}}"#, r#"{"a": "1"}"#, false),
            (r#"{"value": {"session": {"duration": [162]}}}"#, r#"{"session": {"duration": 162}}"#, true),
            (r#"{"value": {"session": {"duration": [162]}}}"#, r#"{"session": {"duration": 163}}"#, false),
            (r#"{"value": {"session": {"duration": [162]}}}"#, r#"{"session": 162}"#, false),
            (r#"{"value": {"session": ["x"]}}"#, r#"{"session": {"a": "x"}}"#, false),
            (r#"{"value": {"tags": ["b"]}}"#, r#"{"tags": ["a", "b"]}"#, true),
            (r#"{"value": {"tags": ["c"]}}"#, r#"{"tags": ["a", "b"]}"#, false),
            (r#"{"value": {"tags": ["b"]}}"#, r#"{"tags": [["a"], ["b"]]}"#, true),
            (r#"{"value": {"tags": ["b"]}}"#, r#"{"tags": []}"#, false),
            (r#"{"value": {"items": {"sku": ["x"]}}}"#, r#"{"items": [{"sku": "y"}, {"sku": "x"}]}"#, true),
            (
                r#"{"value": {"items": {"sku": ["x"], "n": [2]}}}"#,
                r#"{"items": [{"sku": "x", "n": 1}, {"sku": "y", "n": 2}]}"#,
                false,
            ),
            (
                r#"{"value": {"items": {"sku": ["x"], "n": [2]}}}"#,
                r#"{"items": [{"sku": "y", "n": 1}, {"sku": "x", "n": 2}]}"#,
                true,
            ),
        ])
    }

    #[test]
    fn or_takes_any_alternative() -> Result<(), PatternError> {
        let either = r#"{"value": {"$or": [{"a": ["1"]}, {"b": ["2"]}]}}"#;
        let top_level = r#"{"$or": [{"topic": ["payments"]}, {"value": {"b": ["2"]}}]}"#;
        assert_value_cases(&[
            (either, r#"{"a": "1"}"#, true),
            (either, r#"{"b": "2"}"#, true),
            (either, r#"{"a": "2", "b": "1"}"#, false),
            (top_level, r#"{"b": "2"}"#, true),
            (top_level, r#"{"b": "3"}"#, false),
        ])
    }

    #[test]
    fn prefix_suffix_and_ignore_case() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": {"id": [{"prefix": "AB"}]}}"#, r#"{"id": "AB1234"}"#, true),
            (r#"{"value": {"id": [{"prefix": "AB"}]}}"#, r#"{"id": "ab1234"}"#, false),
            (r#"{"value": {"id": [{"prefix": "12"}]}}"#, r#"{"id": 1234}"#, false),
            (r#"{"value": {"id": [{"prefix": ""}]}}"#, r#"{"id": "anything"}"#, true),
            (r#"{"value": {"id": [{"prefix": {"equals-ignore-case": "ab"}}]}}"#, r#"{"id": "AB1234"}"#, true),
            (r#"{"value": {"id": [{"prefix": {"equals-ignore-case": "ab"}}]}}"#, r#"{"id": "XAB"}"#, false),
            (r#"{"value": {"file": [{"suffix": ".png"}]}}"#, r#"{"file": "a.png"}"#, true),
            (r#"{"value": {"file": [{"suffix": ".png"}]}}"#, r#"{"file": "a.PNG"}"#, false),
            (r#"{"value": {"file": [{"suffix": {"equals-ignore-case": ".png"}}]}}"#, r#"{"file": "a.PNG"}"#, true),
            (r#"{"value": {"file": [{"suffix": {"equals-ignore-case": ".png"}}]}}"#, r#"{"file": "a.jpg"}"#, false),
            (r#"{"value": {"state": [{"equals-ignore-case": "running"}]}}"#, r#"{"state": "RuNNing"}"#, true),
            (r#"{"value": {"state": [{"equals-ignore-case": "running"}]}}"#, r#"{"state": "run"}"#, false),
            (r#"{"value": {"state": [{"equals-ignore-case": "true"}]}}"#, r#"{"state": true}"#, false),
        ])
    }

    #[test]
    fn wildcard_matches_any_run_of_characters() -> Result<(), PatternError> {
        let path = r#"{"value": {"p": [{"wildcard": "*/lib/*.so"}]}}"#;
        let middle = r#"{"value": {"p": [{"wildcard": "a*b*c"}]}}"#;
        let escaped = r#"{"value": {"p": [{"wildcard": "a\\*b"}]}}"#;
        assert_value_cases(&[
            (path, r#"{"p": "/usr/lib/x.so"}"#, true),
            (path, r#"{"p": "/usr/lib/x.so.1"}"#, false),
            (path, r#"{"p": "/usr/bin/x.so"}"#, false),
            (middle, r#"{"p": "abc"}"#, true),
            (middle, r#"{"p": "aXbYbZc"}"#, true),
            (middle, r#"{"p": "ac"}"#, false),
            (middle, r#"{"p": "abcab"}"#, false),
            (r#"{"value": {"p": [{"wildcard": "*"}]}}"#, r#"{"p": ""}"#, true),
            (r#"{"value": {"p": [{"wildcard": "ab*ba"}]}}"#, r#"{"p": "aba"}"#, false),
            (r#"{"value": {"p": [{"wildcard": "plain"}]}}"#, r#"{"p": "plain"}"#, true),
            (r#"{"value": {"p": [{"wildcard": "plain"}]}}"#, r#"{"p": "plainer"}"#, false),
            (escaped, r#"{"p": "a*b"}"#, true),
            (escaped, r#"{"p": "axb"}"#, false),
            (r#"{"value": {"p": [{"wildcard": "1*"}]}}"#, r#"{"p": 12}"#, false),
        ])
    }

    #[test]
    fn anything_but_excludes_only_listed_values() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": "running"}"#, true),
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": "init"}"#, false),
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{}"#, false),
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": 5}"#, true),
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": ["init", "done"]}"#, true),
            (r#"{"value": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": ["init"]}"#, false),
            (r#"{"value": {"s": [{"anything-but": ["stopped", "overloaded"]}]}}"#, r#"{"s": "overloaded"}"#, false),
            (r#"{"value": {"s": [{"anything-but": ["stopped", "overloaded"]}]}}"#, r#"{"s": "ok"}"#, true),
            (r#"{"value": {"n": [{"anything-but": 123}]}}"#, r#"{"n": 123.0}"#, false),
            (r#"{"value": {"n": [{"anything-but": [100, 200]}]}}"#, r#"{"n": 200}"#, false),
            (r#"{"value": {"n": [{"anything-but": [100, 200]}]}}"#, r#"{"n": 300}"#, true),
            (r#"{"value": {"n": [{"anything-but": [100, 200]}]}}"#, r#"{"n": "100"}"#, true),
            (r#"{"value": {"r": [{"anything-but": {"prefix": "us-"}}]}}"#, r#"{"r": "us-east-1"}"#, false),
            (r#"{"value": {"r": [{"anything-but": {"prefix": "us-"}}]}}"#, r#"{"r": "eu-west-1"}"#, true),
            (r#"{"value": {"r": [{"anything-but": {"prefix": ["us-", "eu-"]}}]}}"#, r#"{"r": "eu-west-1"}"#, false),
            (r#"{"value": {"f": [{"anything-but": {"suffix": ".png"}}]}}"#, r#"{"f": "a.png"}"#, false),
            (r#"{"value": {"f": [{"anything-but": {"suffix": ".png"}}]}}"#, r#"{"f": "a.jpg"}"#, true),
            (r#"{"value": {"s": [{"anything-but": {"equals-ignore-case": "init"}}]}}"#, r#"{"s": "INIT"}"#, false),
            (r#"{"value": {"s": [{"anything-but": {"equals-ignore-case": ["a", "b"]}}]}}"#, r#"{"s": "c"}"#, true),
            (r#"{"value": {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}}"#, r#"{"p": "/usr/lib/x"}"#, false),
            (r#"{"value": {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}}"#, r#"{"p": "/usr/bin/x"}"#, true),
        ])
    }

    #[test]
    fn numeric_ranges_match_numbers_only() -> Result<(), PatternError> {
        let between = r#"{"value": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#;
        assert_value_cases(&[
            (between, r#"{"c": 0}"#, false),
            (between, r#"{"c": 0.5}"#, true),
            (between, r#"{"c": 5}"#, true),
            (between, r#"{"c": 5.000001}"#, false),
            (between, r#"{"c": "3"}"#, false),
            (between, r#"{"c": [9, 3]}"#, true),
            (between, r#"{}"#, false),
            (r#"{"value": {"c": [{"numeric": [">=", 0, "<", 5]}]}}"#, r#"{"c": 0}"#, true),
            (r#"{"value": {"c": [{"numeric": [">=", 0, "<", 5]}]}}"#, r#"{"c": 5}"#, false),
            (r#"{"value": {"c": [{"numeric": ["<", 10]}]}}"#, r#"{"c": -1e9}"#, true),
            (r#"{"value": {"c": [{"numeric": ["<=", 10]}]}}"#, r#"{"c": 10}"#, true),
            (r#"{"value": {"c": [{"numeric": [">", 10]}]}}"#, r#"{"c": 10}"#, false),
            (r#"{"value": {"c": [{"numeric": ["=", 3.018e2]}]}}"#, r#"{"c": 301.8}"#, true),
            (r#"{"value": {"c": [{"numeric": ["=", 301]}]}}"#, r#"{"c": 301.8}"#, false),
            (r#"{"value": {"c": [{"numeric": [">", 0]}, {"numeric": ["<", -10]}]}}"#, r#"{"c": -20}"#, true),
        ])
    }

    #[test]
    fn exists_looks_at_leaves() -> Result<(), PatternError> {
        let present = r#"{"value": {"c": [{"exists": true}]}}"#;
        let absent = r#"{"value": {"c": [{"exists": false}]}}"#;
        assert_value_cases(&[
            (present, r#"{"c": 1}"#, true),
            (present, r#"{"c": null}"#, true),
            (present, r#"{"c": ""}"#, true),
            (present, r#"{"d": 1}"#, false),
            (present, r#"{"c": {"c1": 100}}"#, false),
            (present, r#"{"c": []}"#, false),
            (absent, r#"{"d": 1}"#, true),
            (absent, r#"{"c": 1}"#, false),
            (absent, r#"{"c": {"c1": 100}}"#, true),
            (r#"{"value": {"a": {"b": [{"exists": false}]}}}"#, r#"{"x": 1}"#, true),
            (r#"{"value": {"a": {"b": [{"exists": false}]}}}"#, r#"{"a": {"b": 1}}"#, false),
            (r#"{"value": {"a": {"b": [{"exists": true}]}}}"#, r#"{"a": 5}"#, false),
        ])
    }

    #[test]
    fn cidr_matches_addresses_in_the_block() -> Result<(), PatternError> {
        let v4 = r#"{"value": {"ip": [{"cidr": "10.0.0.0/24"}]}}"#;
        let v6 = r#"{"value": {"ip": [{"cidr": "2001:db8::/32"}]}}"#;
        assert_value_cases(&[
            (v4, r#"{"ip": "10.0.0.33"}"#, true),
            (v4, r#"{"ip": "10.0.1.33"}"#, false),
            (v4, r#"{"ip": "not an ip"}"#, false),
            (v4, r#"{"ip": "2001:db8::1"}"#, false),
            (r#"{"value": {"ip": [{"cidr": "0.0.0.0/0"}]}}"#, r#"{"ip": "192.168.1.1"}"#, true),
            (r#"{"value": {"ip": [{"cidr": "10.0.0.7/32"}]}}"#, r#"{"ip": "10.0.0.7"}"#, true),
            (r#"{"value": {"ip": [{"cidr": "10.0.0.7/32"}]}}"#, r#"{"ip": "10.0.0.8"}"#, false),
            (v6, r#"{"ip": "2001:db8:1::5"}"#, true),
            (v6, r#"{"ip": "2001:db9::5"}"#, false),
        ])
    }

    #[test]
    fn json_scalar_values_are_the_value_itself() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": ["abc"]}"#, r#""abc""#, true),
            (r#"{"value": [{"prefix": "ab"}]}"#, r#""abc""#, true),
            (r#"{"value": [42]}"#, "42", true),
            (r#"{"value": ["42"]}"#, "42", false),
            (r#"{"value": [{"numeric": [">", 40]}]}"#, " 42 ", true),
            (r#"{"value": [true]}"#, "true", true),
            (r#"{"value": [null]}"#, "null", true),
            (r#"{"value": ["x"]}"#, r#"["a", "x"]"#, true),
            (r#"{"value": ["abc"]}"#, r#"{"abc": 1}"#, false),
        ])
    }

    #[test]
    fn plain_text_values_match_string_patterns_only() -> Result<(), PatternError> {
        assert_value_cases(&[
            (r#"{"value": ["hello world"]}"#, "hello world", true),
            (r#"{"value": [{"prefix": "hello"}]}"#, "hello world", true),
            (r#"{"value": [{"anything-but": ["error"]}]}"#, "hello world", true),
            (r#"{"value": [{"anything-but": ["error"]}]}"#, "error", false),
            (r#"{"value": [{"exists": true}]}"#, "hello world", true),
            (r#"{"value": [""]}"#, "", true),
            (r#"{"value": [{"numeric": [">", 0]}]}"#, "12 apples", false),
            (r#"{"value": {"a": ["x"]}}"#, "a=x", false),
            (r#"{"value": {"a": [{"exists": false}]}}"#, "a=x", false),
        ])
    }

    #[test]
    fn non_utf8_values_match_on_metadata_only() -> Result<(), PatternError> {
        let binary = record(None, Some(&[0xff, 0xfe, 0x00]), &[]);
        assert_record_cases(&[
            (r#"{"topic": ["orders"]}"#, &binary, true),
            (r#"{"value": [{"exists": true}]}"#, &binary, false),
            (r#"{"value": [{"exists": false}]}"#, &binary, false),
            (r#"{"value": [{"anything-but": "x"}]}"#, &binary, false),
            (r#"{"value": {"a": [{"exists": false}]}}"#, &binary, false),
            (r#"{"topic": ["orders"], "value": [{"exists": true}]}"#, &binary, false),
        ])
    }

    #[test]
    fn records_without_a_value_have_a_null_value() -> Result<(), PatternError> {
        let tombstone = record(None, None, &[]);
        let empty = record(None, Some(b""), &[]);
        assert_record_cases(&[
            (r#"{"value": [null]}"#, &tombstone, true),
            (r#"{"value": [""]}"#, &tombstone, false),
            (r#"{"value": [null]}"#, &empty, false),
            (r#"{"value": [""]}"#, &empty, true),
            (r#"{"value": {"a": ["x"]}}"#, &tombstone, false),
        ])
    }

    #[test]
    fn keys_decode_like_values() -> Result<(), PatternError> {
        let text_key = record(Some(b"user-1"), Some(b"{}"), &[]);
        let number_key = record(Some(b"123"), None, &[]);
        let json_key = record(Some(br#"{"tenant": "acme"}"#), None, &[]);
        let binary_key = record(Some(&[0xc3, 0x28]), Some(br#"{"a": 1}"#), &[]);
        let no_key = record(None, Some(b"x"), &[]);
        assert_record_cases(&[
            (r#"{"key": ["user-1"]}"#, &text_key, true),
            (r#"{"key": [{"prefix": "user-"}]}"#, &text_key, true),
            (r#"{"key": [123]}"#, &number_key, true),
            (r#"{"key": ["123"]}"#, &number_key, false),
            (r#"{"key": {"tenant": ["acme"]}}"#, &json_key, true),
            (r#"{"key": {"tenant": ["other"]}}"#, &json_key, false),
            (r#"{"key": [{"exists": true}]}"#, &binary_key, false),
            (r#"{"value": {"a": [1]}}"#, &binary_key, true),
            (r#"{"key": [null]}"#, &no_key, true),
        ])
    }

    #[test]
    fn headers_match_as_utf8_strings_by_name() -> Result<(), PatternError> {
        let headers = record(
            None,
            None,
            &[("source", b"billing"), ("tag", b"a"), ("tag", b"b"), ("count", b"5"), ("raw", &[0xff])],
        );
        assert_record_cases(&[
            (r#"{"headers": {"source": ["billing"]}}"#, &headers, true),
            (r#"{"headers": {"source": ["shipping"]}}"#, &headers, false),
            (r#"{"headers": {"source": [{"prefix": "bill"}]}}"#, &headers, true),
            (r#"{"headers": {"tag": ["b"]}}"#, &headers, true),
            (r#"{"headers": {"tag": [{"anything-but": "a"}]}}"#, &headers, true),
            (r#"{"headers": {"count": ["5"]}}"#, &headers, true),
            (r#"{"headers": {"count": [5]}}"#, &headers, false),
            (r#"{"headers": {"raw": [{"exists": true}]}}"#, &headers, true),
            (r#"{"headers": {"raw": [{"anything-but": "x"}]}}"#, &headers, false),
            (r#"{"headers": {"missing": [{"exists": false}]}}"#, &headers, true),
            (r#"{"headers": {"missing": [{"exists": true}]}}"#, &headers, false),
            (r#"{"headers": {"source": {"a": ["b"]}}}"#, &headers, false),
            (r#"{"headers": ["billing"]}"#, &headers, false),
        ])
    }

    #[test]
    fn metadata_fields_match_as_in_the_event() -> Result<(), PatternError> {
        let r = record(None, None, &[]);
        assert_record_cases(&[
            (r#"{"topic": ["orders"]}"#, &r, true),
            (r#"{"topic": ["payments"]}"#, &r, false),
            (r#"{"partition": [3]}"#, &r, true),
            (r#"{"partition": ["3"]}"#, &r, false),
            (r#"{"offset": [{"numeric": [">=", 40, "<", 50]}]}"#, &r, true),
            (r#"{"timestamp": [{"numeric": [">", 1600000000000]}]}"#, &r, true),
            (r#"{"timestamp": [{"numeric": ["<", 1600000000000]}]}"#, &r, false),
            (r#"{"timestampType": ["CREATE_TIME"]}"#, &r, true),
            (r#"{"timestampType": ["LOG_APPEND_TIME"]}"#, &r, false),
            (r#"{"topic": ["orders"], "partition": [4]}"#, &r, false),
        ])
    }

    #[test]
    fn a_record_passes_when_any_pattern_matches() -> Result<(), PatternError> {
        let filters = filters(&[r#"{"value": {"kind": ["a"]}}"#, r#"{"value": {"kind": ["b"]}}"#])?;
        assert!(filters.matches(&value_record(r#"{"kind": "a"}"#)));
        assert!(filters.matches(&value_record(r#"{"kind": "b"}"#)));
        assert!(!filters.matches(&value_record(r#"{"kind": "c"}"#)));
        Ok(())
    }

    #[test]
    fn without_patterns_every_record_passes() -> Result<(), PatternError> {
        let binary = record(Some(&[0xff]), Some(&[0xff]), &[]);
        assert!(Filters::new(None)?.matches(&binary));
        assert!(filters(&[])?.matches(&binary));
        assert!(Filters::default().matches(&binary));
        Ok(())
    }

    #[test]
    fn more_than_five_patterns_are_rejected() {
        let six = [r#"{"topic": ["a"]}"#; 6];
        assert!(matches!(filters(&six), Err(PatternError::TooMany(6))));
    }

    #[test]
    fn invalid_patterns_are_rejected_with_the_problem_quoted() {
        let cases = [
            ("not json", "not JSON: expected"),
            (r#"["value"]"#, r#"at $: a pattern must be a JSON object, got ["value"]"#),
            ("{}", "at $: empty objects are not allowed"),
            (r#"{"value": {}}"#, "at $.value: empty objects are not allowed"),
            (
                r#"{"value": {"orderType": "Premium"}}"#,
                r#"at $.value.orderType: "Premium" must be inside an array, as ["Premium"]"#,
            ),
            (r#"{"value": 5}"#, "at $.value: 5 must be inside an array, as [5]"),
            (r#"{"value": []}"#, "at $.value: empty arrays are not allowed"),
            (r#"{"value": ["a", ["b"]]}"#, r#"at $.value[1]: ["b"] is not a match value"#),
            (r#"{"vaule": ["x"]}"#, r#"at $.vaule: "vaule" is not a record field; allowed: topic, partition"#),
            (r#"{"value": [{"contains": "x"}]}"#, r#"at $.value[0]: unknown operator "contains"; allowed: prefix"#),
            (r#"{"value": [{"prefix": "a", "suffix": "b"}]}"#, "a match expression takes exactly one operator"),
            (r#"{"value": [{}]}"#, "a match expression takes exactly one operator, got {}"),
            (r#"{"value": [{"prefix": 5}]}"#, r#""prefix" takes a string, got 5"#),
            (
                r#"{"value": [{"suffix": {"foo": "x"}}]}"#,
                r#""suffix" takes a string or {"equals-ignore-case": string}"#,
            ),
            (r#"{"value": [{"equals-ignore-case": ["x"]}]}"#, r#""equals-ignore-case" takes a string, got ["x"]"#),
            (r#"{"value": [{"exists": "yes"}]}"#, r#""exists" takes true or false, got "yes""#),
            (r#"{"value": [{"numeric": 5}]}"#, r#""numeric" takes an array"#),
            (r#"{"value": [{"numeric": [">", "5"]}]}"#, r#""numeric" expects a number after ">""#),
            (
                r#"{"value": [{"numeric": [5, ">"]}]}"#,
                r#""numeric" expects an operator (=, <, <=, >, >=) at position 0"#,
            ),
            (r#"{"value": [{"numeric": ["==", 5]}]}"#, r#""numeric" has an unknown operator "==""#),
            (r#"{"value": [{"numeric": ["<", 5, ">", 0]}]}"#, r#""numeric" has too many elements, got ["<",5,">",0]"#),
            (r#"{"value": [{"numeric": ["=", 5, "<", 6]}]}"#, r#""numeric" has too many elements"#),
            (r#"{"value": [{"numeric": [">", 0, ">", 5]}]}"#, r#"takes only "<" or "<=" after a lower bound, not ">""#),
            (r#"{"value": [{"numeric": [">", 10, "<", 5]}]}"#, "needs the lower bound 10 below the upper bound 5"),
            (r#"{"value": [{"numeric": [">", 5, "<=", 5]}]}"#, "needs the lower bound 5 below the upper bound 5"),
            (r#"{"value": [{"numeric": [">", 0, "<"]}]}"#, r#""numeric" expects a number after "<""#),
            (r#"{"value": [{"anything-but": []}]}"#, "takes a non-empty list of only strings or only numbers"),
            (r#"{"value": [{"anything-but": ["a", 1]}]}"#, "takes a non-empty list of only strings or only numbers"),
            (r#"{"value": [{"anything-but": null}]}"#, r#""anything-but" takes a string, a number, a list"#),
            (r#"{"value": [{"anything-but": {"prefix": ""}}]}"#, r#"with "prefix" does not take an empty string"#),
            (
                r#"{"value": [{"anything-but": {"prefix": 5}}]}"#,
                r#"with "prefix" takes a string or a non-empty list of strings"#,
            ),
            (
                r#"{"value": [{"anything-but": {"numeric": [">", 1]}}]}"#,
                "takes prefix, suffix, equals-ignore-case or wildcard",
            ),
            (r#"{"value": [{"wildcard": "a**b"}]}"#, r#"wildcard "a**b" has consecutive wildcard characters"#),
            (r#"{"value": [{"wildcard": "a\\qb"}]}"#, "has a backslash that escapes neither"),
            (r#"{"value": [{"anything-but": {"wildcard": "**"}}]}"#, "has consecutive wildcard characters"),
            (r#"{"value": [{"cidr": "10.0.0.0"}]}"#, r#""10.0.0.0" is not a CIDR block"#),
            (r#"{"value": [{"cidr": "10.0.0.0/33"}]}"#, r#""10.0.0.0/33" is not a CIDR block"#),
            (r#"{"value": [{"cidr": "host/8"}]}"#, r#""host/8" is not a CIDR block"#),
            (r#"{"$or": [{"value": ["a"]}]}"#, r#"at $.$or: "$or" takes an array of at least two objects"#),
            (r#"{"$or": [{"value": ["a"]}, 5]}"#, r#""$or" takes objects only, got 5"#),
            (r#"{"$or": [{"value": ["a"]}, {"nope": ["b"]}]}"#, r#"at $.$or[1].nope: "nope" is not a record field"#),
            (r#"{"value": {"tags": ["a", {"prefix": 1}]}}"#, "at $.value.tags[1]: "),
        ];
        let mut wrong = Vec::new();
        for (pattern, expected) in cases {
            match Pattern::parse(pattern) {
                Ok(parsed) => wrong.push(format!("{pattern} parsed as {parsed:?}")),
                Err(error) if !error.to_string().contains(expected) => {
                    wrong.push(format!("{pattern}: {error:?} does not say {expected:?}"))
                }
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn patterns_longer_than_aws_allows_are_rejected() {
        let long = format!(r#"{{"value": ["{}"]}}"#, "x".repeat(MAX_PATTERN_CHARS));
        assert!(matches!(Pattern::parse(&long), Err(PatternError::TooLong(n)) if n == MAX_PATTERN_CHARS + 15));
    }

    #[test]
    fn every_operator_parses() -> Result<(), PatternError> {
        let all = r#"{"value": {"a": ["x", 1, true, null, {"prefix": "p"}, {"prefix": {"equals-ignore-case": "p"}},
            {"suffix": "s"}, {"suffix": {"equals-ignore-case": "s"}}, {"equals-ignore-case": "e"},
            {"wildcard": "w*"}, {"anything-but": "x"}, {"anything-but": [1, 2]},
            {"anything-but": {"prefix": "p"}}, {"anything-but": {"suffix": ["s"]}},
            {"anything-but": {"equals-ignore-case": "e"}}, {"anything-but": {"wildcard": "*w"}},
            {"numeric": ["=", 1]}, {"numeric": [">=", 0, "<=", 1]}, {"numeric": ["<", 1]},
            {"exists": true}, {"cidr": "::1/128"}]}}"#;
        Pattern::parse(all)?;
        Ok(())
    }
}
