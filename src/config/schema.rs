//! The JSON Schema of `config.yaml`, generated from the types in `types.rs`, and the walk that
//! checks a parsed document against it, reporting every problem with its YAML path.
//!
//! The walk covers the subset of JSON Schema that schemars emits for our types (type,
//! properties/required/additionalProperties, items/minItems, minimum/maximum, minLength,
//! enum/const, anyOf/oneOf, format). It is ours rather than a generic validator's so that
//! each message is the precise one wsgate has always printed (a format's checker message from
//! `validate.rs`, "did you mean", quoted numbers, bare-number durations) and so that what it
//! refuses can be cut out of the tree: serde then reads the rest, and the semantic pass still
//! reports the problems in the valid parts. A test runs the standard `jsonschema` validator
//! over the same schema to keep the two in agreement.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use super::leaf::check_format;
use super::types::Config;
use super::{ConfigError, duration};

/// One step of a YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A map key.
    Key(String),
    /// A list index.
    Idx(usize),
}

/// Formats a path as `routes[1].upstream`.
pub(crate) fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Idx(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The schema of `config.yaml` (draft-07, every subschema inline), built once.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut settings = SchemaSettings::draft07();
        settings.inline_subschemas = true;
        let mut v = settings
            .into_generator()
            .into_root_schema_for::<Config>()
            .to_value();
        tidy(&mut v);
        v
    })
}

/// Drops defaults that say nothing (null, empty lists and strings, maps) or are placeholders
/// (the defaults of required keys), everywhere in the schema. An empty string stands for an
/// absent value that a rule between keys requires (`tls.cert` unless `tls.acme`).
fn tidy(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let required: Vec<String> = m
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for name in &required {
                    if let Some(Value::Object(p)) = props.get_mut(name) {
                        p.remove("default");
                    }
                }
            }
            let pointless = match m.get("default") {
                Some(Value::Null | Value::Object(_)) => true,
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if pointless {
                m.remove("default");
            }
            for (_, child) in m.iter_mut() {
                tidy(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// What to cut from the tree after a problem, so that serde only sees valid values.
#[derive(Debug, Clone)]
enum Cut {
    /// Remove the value at this path (the nearest map key at or above the problem).
    Remove(Vec<Seg>),
    /// Replace this list item with `{}` (keeps later items' indices, which paths name).
    Empty(Vec<Seg>),
}

/// Collects problems and the cuts and poisoned paths that go with them.
#[derive(Default)]
pub(crate) struct Problems {
    /// Problems in the order found.
    pub(crate) errors: Vec<ConfigError>,
    cuts: Vec<Cut>,
    /// Paths with a reported problem (or cut): later problems at or under them are echoes.
    poisoned: Vec<Vec<Seg>>,
}

impl Problems {
    /// Records a problem unless a problem was already reported at or above `path`.
    pub(crate) fn push(&mut self, path: &[Seg], message: impl Into<String>) {
        if self.is_poisoned(path) {
            return;
        }
        self.errors.push(ConfigError::new(display(path), message));
        self.poisoned.push(path.to_vec());
    }

    /// Whether a problem was already reported at or above `path`.
    pub(crate) fn is_poisoned(&self, path: &[Seg]) -> bool {
        self.poisoned.iter().any(|p| path.starts_with(p))
    }

    /// Records a problem whose value must not reach serde.
    pub(crate) fn refuse(&mut self, path: &[Seg], message: impl Into<String>) {
        self.push(path, message);
        self.cuts.push(Cut::Remove(nearest_key(path)));
    }

    /// Records several problems of one value (each unset `${VAR}` of a string), and cuts it.
    pub(crate) fn refuse_all(&mut self, path: &[Seg], messages: Vec<String>) {
        if self.is_poisoned(path) {
            return;
        }
        for m in messages {
            self.errors.push(ConfigError::new(display(path), m));
        }
        self.poisoned.push(path.to_vec());
        self.cuts.push(Cut::Remove(nearest_key(path)));
    }

    /// Cuts the value at `path` (its problem was reported under it).
    fn cut(&mut self, path: &[Seg]) {
        self.cuts.push(Cut::Remove(path.to_vec()));
    }

    /// Like `refuse`, for a list item that should be a map: the item becomes `{}`.
    fn refuse_item(&mut self, path: &[Seg], message: impl Into<String>) {
        self.push(path, message);
        self.cuts.push(Cut::Empty(path.to_vec()));
    }

    /// Removes every refused value from `tree`; from now on a problem under a cut value
    /// is an echo (a placeholder took its place). Not earlier: one bad list item must not
    /// hide the next one.
    pub(crate) fn apply_cuts(&mut self, tree: &mut Value) {
        for cut in &self.cuts {
            let (Cut::Remove(p) | Cut::Empty(p)) = cut;
            self.poisoned.push(p.clone());
            match cut {
                Cut::Remove(path) => {
                    if let Some((Seg::Key(k), parent)) = path.split_last()
                        && let Some(Value::Object(m)) = get_mut(tree, parent)
                    {
                        m.remove(k);
                    } else if path.is_empty() {
                        *tree = Value::Object(Map::new());
                    }
                }
                Cut::Empty(path) => {
                    if let Some(v) = get_mut(tree, path) {
                        *v = Value::Object(Map::new());
                    }
                }
            }
        }
    }
}

/// The path up to its last map key: a bad list item removes its whole list.
fn nearest_key(path: &[Seg]) -> Vec<Seg> {
    let end = path
        .iter()
        .rposition(|s| matches!(s, Seg::Key(_)))
        .map_or(0, |i| i + 1);
    path[..end].to_vec()
}

fn get_mut<'v>(tree: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    path.iter().try_fold(tree, |v, seg| match (seg, v) {
        (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
        (Seg::Idx(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// How a value is named in messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Removes `key: ~` (an empty YAML value) from every map: it means "absent".
pub(crate) fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn type_name(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "array" => "a list",
        "object" => "a map",
        _ => "something else",
    }
}

fn types(s: &Map<String, Value>) -> Vec<&str> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Walks `v` against `schema`, recording problems and cuts.
pub(crate) fn walk(v: &Value, schema: &Value, problems: &mut Problems) {
    let mut w = Walker { problems };
    if let Some(s) = schema.as_object() {
        w.node(v, s, &mut Vec::new(), None);
    }
}

struct Walker<'p> {
    problems: &'p mut Problems,
}

impl Walker<'_> {
    /// `messages`: an `errorMessage` map inherited from an enclosing anyOf.
    fn node(
        &mut self,
        v: &Value,
        s: &Map<String, Value>,
        path: &mut Vec<Seg>,
        messages: Option<&Map<String, Value>>,
    ) {
        let messages = s
            .get("errorMessage")
            .and_then(Value::as_object)
            .or(messages);
        if let Some(branches) = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Value::as_array)
        {
            let mut flat = Vec::new();
            flatten(branches, &mut flat);
            return self.choice(v, s, &flat, path, messages);
        }
        let ts = types(s);
        if !ts.is_empty() && !ts.iter().any(|t| type_matches(t, v)) {
            let msg = self.type_message(v, s, &ts, messages);
            return self.refuse(v, s, path, msg);
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array)
            && !allowed.contains(v)
        {
            // A format checker explains a near miss better than the list (JWT algorithms).
            if let (Some(f), Some(text)) = (s.get("format").and_then(Value::as_str), v.as_str())
                && let Some(Err(m)) = check_format(f, text)
            {
                return self.problems.refuse(path, m);
            }
            let msg = unknown_value(v, path, allowed.iter());
            return self.problems.refuse(path, msg);
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            let msg = unknown_value(v, path, std::iter::once(c));
            return self.problems.refuse(path, msg);
        }
        match v {
            Value::String(text) => self.string(text, s, path, messages),
            Value::Number(_) => self.number(v, s, path),
            Value::Array(items) => self.list(items, s, path, messages),
            Value::Object(m) => self.map(m, s, path),
            _ => {}
        }
    }

    fn refuse(&mut self, v: &Value, s: &Map<String, Value>, path: &[Seg], msg: String) {
        // A list item that should be a map becomes `{}`, so that its siblings keep their
        // indices and their own problems are still reported.
        if matches!(path.last(), Some(Seg::Idx(_))) && types(s) == ["object"] && !v.is_object() {
            self.problems.refuse_item(path, msg);
        } else {
            self.problems.refuse(path, msg);
        }
    }

    fn type_message(
        &self,
        v: &Value,
        s: &Map<String, Value>,
        ts: &[&str],
        messages: Option<&Map<String, Value>>,
    ) -> String {
        if let Some(m) = messages.and_then(|m| m.get("type")).and_then(Value::as_str) {
            return format!("{m}, got {}", kind(v));
        }
        if ts == ["string"]
            && let Value::Number(n) = v
            && matches!(
                s.get("format").and_then(Value::as_str),
                Some("duration" | "positive-duration")
            )
        {
            return duration::bare_number(&n.to_string());
        }
        if ts == ["integer"] {
            if let Value::String(text) = v
                && text.trim().parse::<u64>().is_ok()
            {
                return format!(
                    "expected an integer, got a quoted string: write {} without quotes",
                    text.trim()
                );
            }
            let shown = match v {
                Value::Number(n) => n.to_string(),
                other => kind(other).to_string(),
            };
            return format!("expected {}, got {shown}", integer_range(s));
        }
        let expected: Vec<&str> = ts.iter().map(|t| type_name(t)).collect();
        format!("expected {}, got {}", expected.join(" or "), kind(v))
    }

    /// anyOf/oneOf: an enum of constants, a tagged union (`type: basic`), or one-or-many.
    fn choice(
        &mut self,
        v: &Value,
        s: &Map<String, Value>,
        branches: &[&Map<String, Value>],
        path: &mut Vec<Seg>,
        messages: Option<&Map<String, Value>>,
    ) {
        if branches.iter().all(|b| b.contains_key("const")) {
            let consts: Vec<&Value> = branches.iter().filter_map(|b| b.get("const")).collect();
            if !v.is_string() {
                return self
                    .problems
                    .refuse(path, format!("expected a string, got {}", kind(v)));
            }
            if !consts.contains(&v) {
                let msg = unknown_value(v, path, consts.into_iter());
                self.problems.refuse(path, msg);
            }
            return;
        }
        if let Some(tag) = tag_of(branches) {
            return self.tagged(v, s, tag, branches, path);
        }
        let pick = branches
            .iter()
            .find(|b| types(b).iter().any(|t| type_matches(t, v)));
        match pick {
            Some(b) => self.node(v, b, path, messages),
            None => {
                let ts: Vec<&str> = branches.iter().flat_map(|b| types(b)).collect();
                let msg = match messages.and_then(|m| m.get("type")).and_then(Value::as_str) {
                    Some(m) => format!("{m}, got {}", kind(v)),
                    None => {
                        let expected: Vec<&str> = ts.iter().map(|t| type_name(t)).collect();
                        format!("expected {}, got {}", expected.join(" or "), kind(v))
                    }
                };
                self.problems.refuse(path, msg);
            }
        }
    }

    fn tagged(
        &mut self,
        v: &Value,
        s: &Map<String, Value>,
        tag: &str,
        branches: &[&Map<String, Value>],
        path: &mut Vec<Seg>,
    ) {
        let Value::Object(m) = v else {
            return self
                .problems
                .refuse(path, format!("expected a map, got {}", kind(v)));
        };
        let noun = s.get("x-tag-noun").and_then(Value::as_str).unwrap_or(tag);
        let tag_path = [path.as_slice(), &[Seg::Key(tag.to_owned())]].concat();
        // Without a valid tag, nothing else in the map can be judged: the whole entry goes.
        let Some(given) = m.get(tag) else {
            self.problems.push(&tag_path, "required key is missing");
            return self.problems.cut(path);
        };
        let branch = branches.iter().find(|b| tag_const(b, tag) == Some(given));
        let Some(branch) = branch else {
            let names: Vec<&Value> = branches.iter().filter_map(|b| tag_const(b, tag)).collect();
            let msg = match given {
                Value::String(g) => format!(
                    "unknown {noun} \"{}\" (expected one of: {})",
                    g.escape_debug(),
                    list(names.into_iter())
                ),
                other => format!("expected a string, got {}", kind(other)),
            };
            self.problems.push(&tag_path, msg);
            return self.problems.cut(path);
        };
        self.node(v, branch, path, None);
    }

    fn string(
        &mut self,
        text: &str,
        s: &Map<String, Value>,
        path: &[Seg],
        messages: Option<&Map<String, Value>>,
    ) {
        if s.get("minLength").and_then(Value::as_u64).unwrap_or(0) > 0 && text.is_empty() {
            let msg = custom(messages, "minLength").unwrap_or("must not be empty");
            return self.problems.refuse(path, msg);
        }
        if let Some(f) = s.get("format").and_then(Value::as_str)
            && let Some(Err(m)) = check_format(f, text)
        {
            self.problems.refuse(path, m);
        }
    }

    fn number(&mut self, v: &Value, s: &Map<String, Value>, path: &[Seg]) {
        let n = v.as_f64().unwrap_or(0.0);
        let below = s
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|min| n < min);
        let above = s
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|max| n > max);
        if below || above {
            let msg = format!("expected {}, got {v}", integer_range(s));
            self.problems.refuse(path, msg);
        }
    }

    fn list(
        &mut self,
        items: &[Value],
        s: &Map<String, Value>,
        path: &mut Vec<Seg>,
        messages: Option<&Map<String, Value>>,
    ) {
        let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        if (items.len() as u64) < min {
            let msg = custom(messages, "minItems").unwrap_or("at least one item is required");
            return self.problems.refuse(path, msg);
        }
        if let Some(item_schema) = s.get("items").and_then(Value::as_object) {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Idx(i));
                self.node(item, item_schema, path, None);
                path.pop();
            }
        }
    }

    fn map(&mut self, m: &Map<String, Value>, s: &Map<String, Value>, path: &mut Vec<Seg>) {
        let props = s.get("properties").and_then(Value::as_object);
        let extra = s.get("additionalProperties");
        for (key, value) in m {
            path.push(Seg::Key(key.clone()));
            match (props.and_then(|p| p.get(key)), extra) {
                (Some(Value::Object(ps)), _) => self.node(value, ps, path, None),
                (None, Some(Value::Object(es))) => self.node(value, es, path, None),
                (None, Some(Value::Bool(false))) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let msg = unknown_key(key, &known);
                    self.problems.refuse(path, msg);
                }
                _ => {}
            }
            path.pop();
        }
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !m.contains_key(name) {
                path.push(Seg::Key(name.to_owned()));
                self.problems.push(path, "required key is missing");
                path.pop();
            }
        }
    }
}

/// The branches of an anyOf, with nested anyOfs (an `Option` around a one-or-many) opened
/// and `null` left out (an empty value was removed before the walk).
fn flatten<'s>(branches: &'s [Value], out: &mut Vec<&'s Map<String, Value>>) {
    for b in branches.iter().filter_map(Value::as_object) {
        match b.get("anyOf").and_then(Value::as_array) {
            Some(inner) if !b.contains_key("type") => flatten(inner, out),
            _ if types(b) == ["null"] => {}
            _ => out.push(b),
        }
    }
}

/// The property all branches of a tagged union fix with `const`, e.g. `type`.
fn tag_of<'s>(branches: &[&'s Map<String, Value>]) -> Option<&'s str> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first
        .iter()
        .find(|(name, p)| {
            p.get("const").is_some() && branches.iter().all(|b| tag_const(b, name).is_some())
        })
        .map(|(name, _)| name.as_str())
}

fn tag_const<'s>(branch: &'s Map<String, Value>, tag: &str) -> Option<&'s Value> {
    branch.get("properties")?.get(tag)?.get("const")
}

fn custom<'m>(messages: Option<&'m Map<String, Value>>, keyword: &str) -> Option<&'m str> {
    messages?.get(keyword)?.as_str()
}

fn integer_range(s: &Map<String, Value>) -> String {
    let min = s.get("minimum").and_then(Value::as_i64);
    let max = s.get("maximum").and_then(Value::as_i64);
    match (min, max) {
        (Some(lo), Some(hi)) if hi < i64::from(u32::MAX) => {
            format!("an integer from {lo} to {hi}")
        }
        (Some(lo), _) if lo >= 1 => "a positive integer".to_string(),
        (Some(0), _) => "a non-negative integer".to_string(),
        _ => "an integer".to_string(),
    }
}

fn list<'a>(values: impl Iterator<Item = &'a Value>) -> String {
    values
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_value<'a>(v: &Value, path: &[Seg], allowed: impl Iterator<Item = &'a Value>) -> String {
    let what = match path.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "value",
    };
    let shown = v
        .as_str()
        .map_or_else(|| v.to_string(), |s| format!("\"{}\"", s.escape_debug()));
    format!(
        "unknown {what} {shown} (expected one of: {})",
        list(allowed)
    )
}

/// `unknown key (expected one of: ...)`, plus the closest known key when one is close.
fn unknown_key(key: &str, known: &[&str]) -> String {
    let mut msg = format!("unknown key (expected one of: {})", known.join(", "));
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, k)) = best {
        msg.push_str(&format!("; did you mean \"{k}\"?"));
    }
    msg
}
