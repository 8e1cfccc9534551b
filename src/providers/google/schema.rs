//! JSON Schema (as OpenAI clients write it for tool `parameters` and
//! `response_format.json_schema.schema`) → the OpenAPI-3 subset Gemini's `Schema`
//! accepts.
//!
//! Gemini answers 400 "Invalid JSON payload received. Unknown name ..." for keywords
//! outside its subset (reference §3.2, §5.10), so the schema is rebuilt from an allow
//! list instead of being passed through:
//!
//! - kept: `type`, `format` (only `date-time`, `enum`, `int32`, `int64`, `float`,
//!   `double`), `title`, `description`, `nullable`, `enum` (only when every value is
//!   a string), `items`, `properties`, `required` (only names that are in
//!   `properties`), `minItems`, `maxItems`, `minimum`, `maximum`, `minLength`,
//!   `maxLength`, `minProperties`, `maxProperties`, `pattern`, `anyOf`,
//!   `propertyOrdering`, `default`, `example`;
//! - rewritten: `$ref` to `#/$defs/..` or `#/definitions/..` is inlined (recursive
//!   references are refused with a 400, Gemini cannot express them, and so is a
//!   request whose references would inline to more than [`MAX_INLINED_NODES`] nodes or
//!   [`MAX_INLINED_BYTES`] bytes, see [`Budget`]); `allOf` is merged
//!   into its parent; `oneOf` becomes `anyOf`; a `{"type": "null"}` branch of
//!   `anyOf` becomes `nullable: true`; `type: [T, "null"]` becomes `type: T,
//!   nullable: true` (several non-null types become an `anyOf`); a string `const`
//!   becomes a one-value `enum`;
//! - dropped: everything else, notably `$schema`, `$id`, `$defs`, `definitions`,
//!   `additionalProperties`, `unevaluatedProperties`, `patternProperties`,
//!   `propertyNames`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`,
//!   `uniqueItems`, `contains`, `prefixItems`, `not`, `if`/`then`/`else`,
//!   `dependentRequired`, `examples`, `readOnly`, `writeOnly`, `deprecated`,
//!   `$comment`, non-string `const`/`enum`, and empty `properties`/`required`
//!   (Gemini rejects an OBJECT with an empty `properties` map).

use serde_json::{Map, Value};

use crate::json_scan::{has_escape, JsonText, Walk};

/// Deepest nesting accepted (Gemini has its own, lower limits; this guards the
/// recursion against hostile input).
const MAX_DEPTH: usize = 64;

/// How much inlining `$ref`s may add to the schemas of one request, in schema
/// nodes and in (approximate) bytes of copied values. Each nesting level of a
/// definition that refers to the one below it twice doubles the output, so without
/// a bound a 2 KB request became a 31 MB upstream body; real schemas stay far
/// below these (the largest generated ones inline to a few hundred nodes).
pub const MAX_INLINED_NODES: usize = 20_000;
pub const MAX_INLINED_BYTES: usize = 1 << 20;

/// What is left of a request's `$ref` inlining allowance ([`MAX_INLINED_NODES`],
/// [`MAX_INLINED_BYTES`]); one per request, shared by all of its schemas. Only what
/// references add is charged: the rest is bounded by the request body limit.
#[derive(Debug)]
pub struct Budget {
    nodes: usize,
    bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            nodes: MAX_INLINED_NODES,
            bytes: MAX_INLINED_BYTES,
        }
    }
}

impl Budget {
    fn charge(&mut self, nodes: usize, bytes: usize) -> Result<(), String> {
        match (self.nodes.checked_sub(nodes), self.bytes.checked_sub(bytes)) {
            (Some(n), Some(b)) => {
                self.nodes = n;
                self.bytes = b;
                Ok(())
            }
            _ => Err(format!(
                "grows past {MAX_INLINED_NODES} schema nodes or {} KiB once its `$ref`s \
                 are inlined (Gemini takes no references, so every use is a copy): \
                 simplify the schema or refer to large definitions fewer times",
                MAX_INLINED_BYTES / 1024
            )),
        }
    }
}

/// About how many bytes `value` takes when serialized (enough to bound copies).
fn approximate_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(approximate_size).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 3 + approximate_size(v))
                .sum::<usize>()
        }
        _ => 8,
    }
}

const STRING_FORMATS: &[&str] = &["date-time", "enum", "int32", "int64", "float", "double"];

/// Sanitize a schema. `Err` carries a one-line reason for the client.
pub fn sanitize(schema: &Value, budget: &mut Budget) -> Result<Value, String> {
    let defs = collect_defs(schema);
    let mut stack = Vec::new();
    clean(schema, &defs, 0, &mut stack, budget)
}

/// Sanitize a function's `parameters`: `None` when the function takes no arguments,
/// in which case the declaration must carry no `parameters` key at all (an empty
/// OBJECT is rejected, reference §3.2 and §5.3).
pub fn sanitize_parameters(schema: &Value, budget: &mut Budget) -> Result<Option<Value>, String> {
    if schema.is_null() {
        return Ok(None);
    }
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    let Value::Object(mut cleaned) = sanitize(schema, budget)? else {
        return Err("must be a JSON Schema object".into());
    };
    match cleaned.get("type").and_then(Value::as_str) {
        None => {
            cleaned.insert("type".into(), Value::String("object".into()));
        }
        Some(t) if t.eq_ignore_ascii_case("object") => {}
        Some(t) => return Err(format!("must have type \"object\", not \"{t}\"")),
    }
    if cleaned.contains_key("properties") {
        Ok(Some(Value::Object(cleaned)))
    } else {
        Ok(None)
    }
}

fn collect_defs(schema: &Value) -> Map<String, Value> {
    let mut defs = Map::new();
    for key in ["definitions", "$defs"] {
        if let Some(Value::Object(map)) = schema.get(key) {
            for (name, value) in map {
                defs.insert(format!("#/{key}/{name}"), value.clone());
            }
        }
    }
    defs
}

fn clean(
    node: &Value,
    defs: &Map<String, Value>,
    depth: usize,
    stack: &mut Vec<String>,
    budget: &mut Budget,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("is nested more than {MAX_DEPTH} levels deep"));
    }
    // Inside a `$ref`, every node is a copy: charge it and the values it copies.
    if !stack.is_empty() {
        let copied: usize = match node {
            Value::Object(map) => map
                .iter()
                .filter(|(_, v)| !v.is_object())
                .map(|(k, v)| k.len() + approximate_size(v))
                .sum(),
            _ => 0,
        };
        budget.charge(1, copied)?;
    }
    let map = match node {
        Value::Object(map) => map,
        // `true` (anything goes) and `{}` are the same schema.
        Value::Bool(true) => return Ok(Value::Object(Map::new())),
        other => return Err(format!("contains a schema that is not an object: {other}")),
    };

    let mut out = Map::new();

    // Inline `$ref` first; keys written next to it refine the referenced schema.
    if let Some(reference) = map.get("$ref") {
        let Some(reference) = reference.as_str() else {
            return Err("has a `$ref` that is not a string".into());
        };
        let Some(target) = defs.get(reference) else {
            return Err(format!(
                "has `$ref: \"{reference}\"`, which is not a local #/$defs or #/definitions entry"
            ));
        };
        if stack.iter().any(|r| r == reference) {
            return Err(format!(
                "is recursive through `{reference}`, which Gemini cannot express"
            ));
        }
        stack.push(reference.to_owned());
        let resolved = clean(target, defs, depth + 1, stack, budget)?;
        stack.pop();
        if let Value::Object(resolved) = resolved {
            out = resolved;
        }
    }

    for sub in map
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Value::Object(part) = clean(sub, defs, depth + 1, stack, budget)? {
            merge_into(&mut out, part);
        }
    }

    for (key, value) in map {
        match key.as_str() {
            "type" => apply_type(&mut out, value),
            "format" if value.as_str().is_some_and(|f| STRING_FORMATS.contains(&f)) => {
                out.insert(key.clone(), value.clone());
            }
            "title" | "description" | "pattern" if value.is_string() => {
                out.insert(key.clone(), value.clone());
            }
            "nullable" if value.is_boolean() => {
                out.insert(key.clone(), value.clone());
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties"
            | "maxProperties" | "minimum" | "maximum"
                if value.is_number() =>
            {
                out.insert(key.clone(), value.clone());
            }
            "default" | "example" => {
                out.insert(key.clone(), value.clone());
            }
            "propertyOrdering" if value.is_array() => {
                out.insert(key.clone(), value.clone());
            }
            "enum" => {
                if let Some(values) = value.as_array() {
                    if !values.is_empty() && values.iter().all(Value::is_string) {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            "const" if value.is_string() && !map.contains_key("enum") => {
                out.insert("enum".into(), Value::Array(vec![value.clone()]));
            }
            "properties" => {
                let Some(properties) = value.as_object() else {
                    return Err("has `properties` that is not an object".into());
                };
                let mut cleaned = match out.remove("properties") {
                    Some(Value::Object(existing)) => existing,
                    _ => Map::new(),
                };
                for (name, schema) in properties {
                    cleaned.insert(name.clone(), clean(schema, defs, depth + 1, stack, budget)?);
                }
                out.insert("properties".into(), Value::Object(cleaned));
            }
            "required" => {
                let names: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v.is_string())
                    .cloned()
                    .collect();
                let mut merged = match out.remove("required") {
                    Some(Value::Array(existing)) => existing,
                    _ => Vec::new(),
                };
                for name in names {
                    if !merged.contains(&name) {
                        merged.push(name);
                    }
                }
                out.insert("required".into(), Value::Array(merged));
            }
            "items" if value.is_object() => {
                out.insert(key.clone(), clean(value, defs, depth + 1, stack, budget)?);
            }
            "anyOf" | "oneOf" => {
                let Some(branches) = value.as_array() else {
                    return Err(format!("has `{key}` that is not a list"));
                };
                let mut kept = Vec::new();
                for branch in branches {
                    let cleaned = clean(branch, defs, depth + 1, stack, budget)?;
                    if is_null_schema(&cleaned) {
                        out.insert("nullable".into(), Value::Bool(true));
                    } else {
                        kept.push(cleaned);
                    }
                }
                match kept.len() {
                    0 => {}
                    // `anyOf: [X, null]`, the usual Optional[X]: just X, nullable.
                    1 => {
                        if let Some(Value::Object(only)) = kept.pop() {
                            merge_into(&mut out, only);
                        }
                    }
                    _ => {
                        out.insert("anyOf".into(), Value::Array(kept));
                    }
                }
            }
            _ => {}
        }
    }

    // Gemini rejects an empty `properties` map and `required` names it does not know.
    let property_names: Vec<String> = match out.get("properties") {
        Some(Value::Object(p)) if !p.is_empty() => p.keys().cloned().collect(),
        _ => {
            out.remove("properties");
            Vec::new()
        }
    };
    if let Some(Value::Array(required)) = out.get_mut("required") {
        required.retain(|r| {
            r.as_str()
                .is_some_and(|r| property_names.iter().any(|p| p == r))
        });
        if required.is_empty() {
            out.remove("required");
        }
    }
    Ok(Value::Object(out))
}

/// `type` as Gemini wants it: one type name; `["T", "null"]` → `T` + `nullable`.
fn apply_type(out: &mut Map<String, Value>, value: &Value) {
    match value {
        Value::String(_) => {
            out.insert("type".into(), value.clone());
        }
        Value::Array(types) => {
            let mut names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            if names.contains(&"null") {
                names.retain(|t| *t != "null");
                if names.is_empty() {
                    out.insert("type".into(), Value::String("null".into()));
                    return;
                }
                out.insert("nullable".into(), Value::Bool(true));
            }
            match names.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_owned()));
                }
                several => {
                    let branches = several
                        .iter()
                        .map(|t| {
                            let mut branch = Map::new();
                            branch.insert("type".into(), Value::String((*t).to_owned()));
                            Value::Object(branch)
                        })
                        .collect();
                    out.insert("anyOf".into(), Value::Array(branches));
                }
            }
        }
        _ => {}
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("null"))
        && schema.as_object().is_some_and(|m| m.len() == 1)
}

/// Merge `part` into `out`: properties and required lists are unioned, other keys
/// keep the value already in `out`.
fn merge_into(out: &mut Map<String, Value>, part: Map<String, Value>) {
    for (key, value) in part {
        match (key.as_str(), out.get_mut(&key), value) {
            ("properties", Some(Value::Object(existing)), Value::Object(more)) => {
                for (name, schema) in more {
                    existing.entry(name).or_insert(schema);
                }
            }
            ("required", Some(Value::Array(existing)), Value::Array(more)) => {
                for name in more {
                    if !existing.contains(&name) {
                        existing.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                out.insert(key, value);
            }
        }
    }
}

/// [`sanitize_parameters`] for a function's `parameters` at `walk` (a checked
/// request's, see `json_scan::Walk::checked`), written from the walk into `out`:
/// the cleaned schema as serde_json writes the tree `sanitize_parameters` makes
/// (members in the same order, the same bytes); `Some(false)`, with nothing
/// written, where that is `None`. `None` gives way to the tree for what this writer
/// leaves to it: `$ref`, `allOf`, `anyOf`, `oneOf`, `const`, a `type` list, a
/// schema that is `true` or not an object, a key with an escape or given twice,
/// deep nesting, and every schema the tree refuses. Used by `raw_request` (an
/// agent's tools without a tree; bench/README.md, session 33).
pub fn write_parameters(walk: &mut Walk<'_>, out: &mut Vec<u8>) -> Option<bool> {
    if walk.null() {
        return Some(false);
    }
    let start = out.len();
    let written = write_schema(walk, out, &mut Scratch::default(), 0)?;
    match &written.kind {
        None => {
            // After the other members, as the tree inserts it.
            out.pop();
            if out.len() > start + 1 {
                out.push(b',');
            }
            out.extend_from_slice(br#""type":"object"}"#);
        }
        Some(kind) => kind.eq_ignore_ascii_case("object").then_some(())?,
    }
    if !written.has_properties {
        out.truncate(start);
    }
    Some(written.has_properties)
}

/// What the caller of [`write_schema`] needs to know of a cleaned schema.
struct Written<'a> {
    /// Its `type`.
    kind: Option<std::borrow::Cow<'a, str>>,
    /// It kept a `properties` member (not empty).
    has_properties: bool,
}

/// A member [`write_schema`] wrote: its key, and where `"key":value` is in `out`.
struct Slot<'a> {
    key: &'a str,
    at: std::ops::Range<usize>,
}

/// Lists [`write_schema`] keeps for each schema object, shared by the nested calls
/// as stacks (each call uses the entries above where it found them and leaves them
/// as it found them): no allocation per schema object.
#[derive(Default)]
struct Scratch<'a> {
    /// The keys read (each once).
    keys: Vec<&'a str>,
    /// The members kept, in the client's order.
    slots: Vec<Slot<'a>>,
    /// `properties`' names.
    names: Vec<&'a str>,
}

/// [`clean`] of the schema object at `walk`, written to `out`: its members in the
/// order the tree's map keeps them (the client's order; an emptied `properties`
/// or `required` taken out as the map's `remove` takes it out, the last member
/// moved into its place). Its `type` is read at the top (`depth` 0) only.
fn write_schema<'a>(
    walk: &mut Walk<'a>,
    out: &mut Vec<u8>,
    scratch: &mut Scratch<'a>,
    depth: usize,
) -> Option<Written<'a>> {
    // Well within `MAX_DEPTH`: deeper schemas are the tree's to judge.
    (depth <= MAX_DEPTH / 2 && walk.at_object()).then_some(())?;
    let start = out.len();
    out.push(b'{');
    let (keys_base, slots_base, names_base) =
        (scratch.keys.len(), scratch.slots.len(), scratch.names.len());
    let mut kind = None;
    // `required`'s names (strings, each once) as read and as written.
    let mut required: Vec<(std::borrow::Cow<'a, str>, JsonText<'a>)> = Vec::new();
    walk.object(|walk, key| {
        if has_escape(key) || scratch.keys[keys_base..].contains(&key) {
            return None;
        }
        scratch.keys.push(key);
        // A member is written as `"key":value` after a comma when one came before;
        // `keep` says whether the value was kept (else it is taken back out).
        let member_start = out.len();
        if scratch.slots.len() > slots_base {
            out.push(b',');
        }
        let at = out.len();
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        let keep = match key {
            "$ref" | "allOf" | "anyOf" | "oneOf" | "const" => return None,
            "type" if walk.at_string() => {
                let text = walk.text()?;
                text.write(out);
                if depth == 0 {
                    kind = Some(text.value());
                }
                true
            }
            "type" if walk.at_array() => return None,
            "format" if walk.at_string() => {
                let text = walk.text()?;
                text.write(out);
                STRING_FORMATS.contains(&text.value().as_ref())
            }
            "title" | "description" | "pattern" if walk.at_string() => {
                walk.text()?.write(out);
                true
            }
            "nullable" => {
                let value = walk.skip()?;
                out.extend_from_slice(value.as_bytes());
                value == "true" || value == "false"
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties"
            | "maxProperties" | "minimum" | "maximum" => {
                let value = walk.skip()?;
                let number = value.starts_with(|c: char| c == '-' || c.is_ascii_digit());
                if number {
                    write_as_serde_writes(out, value)?;
                }
                number
            }
            "default" | "example" => write_as_serde_writes(out, walk.skip()?).is_some(),
            "propertyOrdering" if walk.at_array() => {
                write_as_serde_writes(out, walk.skip()?).is_some()
            }
            "enum" => write_string_list(out, walk)?,
            "properties" => {
                walk.at_object().then_some(())?;
                out.push(b'{');
                walk.object(|walk, name| {
                    if has_escape(name) || scratch.names[names_base..].contains(&name) {
                        return None;
                    }
                    if scratch.names.len() > names_base {
                        out.push(b',');
                    }
                    scratch.names.push(name);
                    out.push(b'"');
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":");
                    write_schema(walk, out, scratch, depth + 1).map(drop)
                })?;
                out.push(b'}');
                true
            }
            "required" => {
                // Written at the end, when the properties are known; a value that
                // is not a list is no names.
                if walk.at_array() {
                    walk.array(|walk| {
                        if !walk.at_string() {
                            return walk.skip().map(drop);
                        }
                        let text = walk.text()?;
                        let name = text.value();
                        if !required.iter().any(|(seen, _)| *seen == name) {
                            required.push((name, text));
                        }
                        Some(())
                    })?;
                } else {
                    walk.skip()?;
                }
                // Its place is kept (a slot without bytes); its comma goes.
                out.truncate(member_start);
                scratch.slots.push(Slot {
                    key,
                    at: member_start..member_start,
                });
                return Some(());
            }
            "items" if walk.at_object() => write_schema(walk, out, scratch, depth + 1).is_some(),
            _ => {
                walk.skip()?;
                false
            }
        };
        if keep {
            scratch.slots.push(Slot {
                key,
                at: at..out.len(),
            });
        } else {
            out.truncate(member_start);
        }
        Some(())
    })?;
    let names = &scratch.names[names_base..];
    let has_properties = !names.is_empty();
    required.retain(|(name, _)| names.contains(&name.as_ref()));
    let slots = &scratch.slots[slots_base..];
    let position = |key: &str| slots.iter().position(|slot| slot.key == key);
    let (properties_at, required_at) = (position("properties"), position("required"));
    // The usual schema: nothing taken out but a `required` that is last, so what was
    // written stands and `required` goes at the end.
    let usual = (has_properties || properties_at.is_none())
        && required_at.is_none_or(|at| at + 1 == slots.len());
    if usual {
        if !required.is_empty() {
            if slots.len() > 1 {
                out.push(b',');
            }
            write_required(out, &required);
        }
    } else {
        // The tree's map, member by member; then what it takes out, as it takes it
        // out; written again in that order.
        let mut order: Vec<usize> = (0..slots.len()).collect();
        let mut swap_remove = |taken: Option<usize>| {
            if let Some(i) = order.iter().position(|&slot| Some(slot) == taken) {
                order.swap_remove(i);
            }
        };
        if !has_properties {
            swap_remove(properties_at);
        }
        if required.is_empty() {
            swap_remove(required_at);
        }
        let members = out[start..].to_vec();
        out.truncate(start + 1);
        for (i, &slot) in order.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if Some(slot) == required_at {
                write_required(out, &required);
            } else {
                let at = &slots[slot].at;
                out.extend_from_slice(&members[at.start - start..at.end - start]);
            }
        }
    }
    out.push(b'}');
    scratch.keys.truncate(keys_base);
    scratch.slots.truncate(slots_base);
    scratch.names.truncate(names_base);
    Some(Written {
        kind,
        has_properties,
    })
}

/// `"required":[…]`.
fn write_required(out: &mut Vec<u8>, required: &[(std::borrow::Cow<'_, str>, JsonText<'_>)]) {
    out.extend_from_slice(br#""required":["#);
    for (i, (_, text)) in required.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        text.write(out);
    }
    out.push(b']');
}

/// `value` (checked JSON) written as serde_json writes it once read into a
/// `Value`: an unsigned integer as it is (the usual `minimum`), anything else read
/// and written by serde_json.
fn write_as_serde_writes(out: &mut Vec<u8>, value: &str) -> Option<()> {
    if value.len() < 20 && value.bytes().all(|b| b.is_ascii_digit()) {
        out.extend_from_slice(value.as_bytes());
        return Some(());
    }
    let value: Value = serde_json::from_str(value).ok()?;
    serde_json::to_writer(out, &value).ok()
}

/// `enum`'s value (at the walk) written as the tree keeps it, a list of strings,
/// not empty: whether it was one (else the tree drops it, and the caller takes
/// back what was written).
fn write_string_list(out: &mut Vec<u8>, walk: &mut Walk<'_>) -> Option<bool> {
    if !walk.at_array() {
        walk.skip()?;
        return Some(false);
    }
    let start = out.len();
    out.push(b'[');
    let mut strings = true;
    walk.array(|walk| {
        if !strings || !walk.at_string() {
            strings = false;
            return walk.skip().map(drop);
        }
        if out.len() > start + 1 {
            out.push(b',');
        }
        walk.text()?.write(out);
        Some(())
    })?;
    let kept = strings && out.len() > start + 1;
    if kept {
        out.push(b']');
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Schemas as tools' `parameters` come, with every keyword the cleaning keeps,
    /// drops, rewrites or refuses, values of the right and the wrong type, names
    /// that `required` has or lacks, empty `properties`.
    fn any_schema() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            Just(json!("text")),
            Just(json!("a\"b\n")),
            Just(json!(3)),
            Just(json!(-2.50)),
            Just(json!(1e21)),
            Just(json!(true)),
            Just(Value::Null),
            Just(json!(["x", "y"])),
            Just(json!({"k": [1, "v"]})),
        ];
        let member = move |inner: BoxedStrategy<Value>| {
            let names = prop::sample::select(vec!["q", "n", "tags", "é"]);
            prop_oneof![
                3 => prop::sample::select(vec![json!("object"), json!("string"), json!("OBJECT"), json!("integer"), json!(5)])
                    .prop_map(|v| ("type".to_owned(), v)),
                1 => Just(("type".to_owned(), json!(["string", "null"]))),
                1 => prop::sample::select(vec!["date-time", "email", "int32", "enum"])
                    .prop_map(|f| ("format".to_owned(), json!(f))),
                2 => (prop::sample::select(vec!["title", "description", "pattern", "nullable",
                        "minimum", "maximum", "minItems", "maxLength", "default", "example",
                        "propertyOrdering", "additionalProperties", "$schema", "examples"]),
                      scalar.clone())
                    .prop_map(|(k, v)| (k.to_owned(), v)),
                1 => prop::sample::select(vec![json!(["a", "b"]), json!([]), json!(["a", 1]), json!("a")])
                    .prop_map(|v| ("enum".to_owned(), v)),
                3 => prop::collection::vec((names.clone(), inner.clone()), 0..4)
                    .prop_map(|props| ("properties".to_owned(), Value::Object(
                        props.into_iter().map(|(n, s)| (n.to_owned(), s)).collect()))),
                2 => prop::collection::vec(prop_oneof![
                        4 => names.prop_map(|n| json!(n)),
                        1 => Just(json!("missing")),
                        1 => Just(json!(7)),
                    ], 0..4)
                    .prop_map(|r| ("required".to_owned(), Value::Array(r))),
                1 => inner.prop_map(|s| ("items".to_owned(), s)),
                1 => prop::sample::select(vec![
                        ("$ref", json!("#/$defs/A")),
                        ("anyOf", json!([{"type": "string"}, {"type": "null"}])),
                        ("const", json!("c")),
                        ("properties", json!("not an object")),
                    ])
                    .prop_map(|(k, v)| (k.to_owned(), v)),
            ]
        };
        let leaf = prop_oneof![
            Just(json!({})),
            Just(json!({"type": "string"})),
            Just(json!({"type": "integer", "minimum": 0})),
            Just(json!(true)),
        ];
        leaf.prop_recursive(4, 40, 6, move |inner| {
            prop::collection::vec(member(inner.boxed()), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect()))
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Whatever `write_parameters` writes is what `sanitize_parameters` makes,
        /// as serde_json writes it, byte for byte; it writes nothing for a schema
        /// the cleaning refuses.
        #[test]
        fn written_parameters_are_the_sanitized_tree(schema in any_schema(), pretty in proptest::bool::ANY) {
            let text = if pretty {
                serde_json::to_string_pretty(&schema).unwrap()
            } else {
                serde_json::to_string(&schema).unwrap()
            };
            let mut out = Vec::new();
            if let Some(written) = write_parameters(&mut Walk::checked(&text), &mut out) {
                let tree = sanitize_parameters(&schema, &mut Budget::default());
                proptest::prop_assert!(tree.is_ok(), "{} {:?}", text, tree);
                proptest::prop_assert_eq!(
                    written.then(|| String::from_utf8(out).unwrap()),
                    tree.unwrap().map(|v| v.to_string()),
                    "{}", text
                );
            }
        }
    }

    /// The generated schemas are mostly written (the test above is not vacuous).
    #[test]
    fn most_generated_parameters_are_written() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut written, mut with_properties) = (0, 0);
        for _ in 0..1000 {
            let schema = any_schema().new_tree(&mut runner).unwrap().current();
            let text = serde_json::to_string(&schema).unwrap();
            if let Some(parameters) = write_parameters(&mut Walk::checked(&text), &mut Vec::new()) {
                written += 1;
                with_properties += usize::from(parameters);
            }
        }
        assert!(
            written > 300 && with_properties > 60,
            "{written} {with_properties}"
        );
    }

    #[test]
    fn drops_unknown_keywords_and_rewrites_nullable_types() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "city": {"type": ["string", "null"], "format": "uri", "description": "name"},
                "unit": {"const": "celsius"},
                "count": {"type": "integer", "exclusiveMinimum": 0, "minimum": 1, "format": "int32"},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
                "mode": {"type": "integer", "enum": [1, 2]}
            },
            "required": ["city", "ghost"]
        });
        let cleaned = sanitize(&schema, &mut Budget::default()).unwrap();
        assert_eq!(
            cleaned,
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "nullable": true, "description": "name"},
                    "unit": {"enum": ["celsius"]},
                    "count": {"type": "integer", "minimum": 1, "format": "int32"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "mode": {"type": "integer"}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn inlines_refs_merges_all_of_and_flattens_optional_any_of() {
        let schema = json!({
            "type": "object",
            "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "properties": {
                "p": {"$ref": "#/$defs/Point", "description": "a point"},
                "q": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]},
                "r": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "s": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}
            }
        });
        let cleaned = sanitize(&schema, &mut Budget::default()).unwrap();
        let point =
            json!({"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]});
        let mut described = point.clone();
        described["description"] = json!("a point");
        let mut nullable = point.clone();
        nullable["nullable"] = json!(true);
        assert_eq!(cleaned["properties"]["p"], described);
        assert_eq!(cleaned["properties"]["q"], nullable);
        assert_eq!(
            cleaned["properties"]["r"],
            json!({"anyOf": [{"type": "string"}, {"type": "number"}]})
        );
        assert_eq!(
            cleaned["properties"]["s"],
            json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["b"]})
        );
        assert!(cleaned.get("$defs").is_none());
    }

    #[test]
    fn recursive_refs_and_bad_shapes_are_refused() {
        let recursive = json!({
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node"
        });
        assert!(sanitize(&recursive, &mut Budget::default())
            .unwrap_err()
            .contains("recursive"));
        assert!(sanitize(
            &json!({"$ref": "https://example.com/s.json"}),
            &mut Budget::default()
        )
        .is_err());
        assert!(sanitize(&json!({"properties": []}), &mut Budget::default()).is_err());
        assert!(sanitize(&json!("string"), &mut Budget::default()).is_err());
    }

    #[test]
    fn argument_less_parameters_are_omitted() {
        assert_eq!(
            sanitize_parameters(&Value::Null, &mut Budget::default()).unwrap(),
            None
        );
        assert_eq!(
            sanitize_parameters(
                &json!({"type": "object", "properties": {}}),
                &mut Budget::default()
            )
            .unwrap(),
            None
        );
        assert_eq!(
            sanitize_parameters(
                &json!({"type": "object", "additionalProperties": false}),
                &mut Budget::default()
            )
            .unwrap(),
            None
        );
        assert_eq!(
            sanitize_parameters(
                &json!({"properties": {"a": {"type": "string"}}}),
                &mut Budget::default()
            )
            .unwrap(),
            Some(json!({"properties": {"a": {"type": "string"}}, "type": "object"}))
        );
        assert!(sanitize_parameters(&json!({"type": "string"}), &mut Budget::default()).is_err());
        assert!(sanitize_parameters(&json!([1]), &mut Budget::default()).is_err());
    }
}
