//! `lm_proxy.loggers.LogEntryTransformer(**mapping)`: builds a log entry whose keys
//! are the mapping's keys and whose values are dotted paths into the context
//! (`request.messages`, `response.usage.completion_tokens`, `request.messages.0.content`).
//! A path that leads nowhere gives null.

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct EntryTransformer {
    fields: Vec<(String, Vec<String>)>,
}

impl EntryTransformer {
    /// From the keyword arguments of the config table; every value must be a path.
    pub fn from_kwargs(kwargs: &Map<String, Value>) -> Result<Self, (String, String)> {
        let mut fields = Vec::new();
        for (name, path) in kwargs {
            let Some(path) = path.as_str() else {
                return Err((name.clone(), "expected a dotted path string".into()));
            };
            fields.push((name.clone(), path.split('.').map(str::to_owned).collect()));
        }
        Ok(EntryTransformer { fields })
    }

    /// Each output key and the path it reads.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.fields.iter().map(|(n, p)| (n.as_str(), p.as_slice()))
    }

    pub fn apply(&self, context: &Value) -> Value {
        let mut entry = Map::with_capacity(self.fields.len());
        for (name, path) in &self.fields {
            let value = lookup_path(context, path.iter().map(String::as_str))
                .cloned()
                .unwrap_or(Value::Null);
            entry.insert(name.clone(), value);
        }
        Value::Object(entry)
    }
}

/// Follow dotted-path segments through objects (by key) and lists (by index).
pub fn lookup_path<'a, 'p>(
    root: &'a Value,
    path: impl IntoIterator<Item = &'p str>,
) -> Option<&'a Value> {
    let mut node = root;
    for segment in path {
        node = match node {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_through_objects_and_lists_and_missing_is_null() {
        let kwargs = json!({
            "prompt": "request.messages",
            "first": "request.messages.0.content",
            "tokens": "response.usage.completion_tokens",
            "missing": "response.nothing.here",
            "bad_index": "request.messages.9",
        });
        let t = EntryTransformer::from_kwargs(kwargs.as_object().unwrap()).unwrap();
        let ctx = json!({"request": {"messages": [{"role": "user", "content": "hi"}]}, "response": {"usage": {"completion_tokens": 3}}});
        let entry = t.apply(&ctx);
        assert_eq!(entry["prompt"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(entry["first"], "hi");
        assert_eq!(entry["tokens"], 3);
        assert_eq!(entry["missing"], Value::Null);
        assert_eq!(entry["bad_index"], Value::Null);
        assert_eq!(
            entry.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["prompt", "first", "tokens", "missing", "bad_index"]
        );
    }
}
