//! Thought signatures kept on the gateway, keyed by tool call, for clients that
//! rewrite or strip tool-call ids.
//!
//! A signed call's id carries its signature after `__thought__` ([`super::ids`]).
//! Some clients change that id before sending the history back: LiteLLM, for one,
//! strips everything from `__thought__` on for model names without "gemini", and
//! Gemini 3 then refuses the turn (or, with the placeholder, loses the reasoning
//! context). So every signature the gateway hands out is also remembered under the
//! id without it (`call_<response>_<candidate>_<ordinal>`, unique per answer), in a
//! bounded, expiring in-process cache shared by all Gemini connections (it outlives
//! reloads), and, when the connection names `thought_signature_backend`, in Redis,
//! so that every replica finds it. A history whose ids come back without signatures
//! gets them restored from there; what cannot be found is left to the placeholder
//! Google documents for histories without signatures (`ids::add_signature_placeholder`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use super::ids::{signature_from_call_id, SIGNATURE_SEPARATOR};
use crate::providers::UpstreamCall;
use crate::shared_state::RedisStore;

/// How long a signature is kept: a tool round trip rarely takes longer, and a
/// conversation resumed later still works through the placeholder.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of ids and signatures kept in this process.
const LOCAL_BUDGET: u64 = 64 * 1024 * 1024;
/// Prefix of the keys in the shared backend.
const KEY_PREFIX: &str = "lm-proxy:thought-signature:";

fn local() -> &'static moka::sync::Cache<String, Arc<str>> {
    static CACHE: OnceLock<moka::sync::Cache<String, Arc<str>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(LOCAL_BUDGET)
            .weigher(|id: &String, signature: &Arc<str>| {
                u32::try_from(id.len() + signature.len() + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(TTL)
            .build()
    })
}

/// Where a connection keeps the signatures it hands out.
#[derive(Clone, Default)]
pub struct SignatureStore {
    shared: Option<Arc<RedisStore>>,
}

impl std::fmt::Debug for SignatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The backend's URL may hold a password.
        f.debug_struct("SignatureStore")
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl SignatureStore {
    pub fn new(shared: Option<RedisStore>) -> SignatureStore {
        SignatureStore {
            shared: shared.map(Arc::new),
        }
    }

    /// Remember the signatures carried by the tool calls of an answer
    /// (`choices[].message`) or a chunk (`choices[].delta`).
    pub fn remember(&self, answer: &Value) {
        let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            let message = choice.get("message").or_else(|| choice.get("delta"));
            let calls = message
                .and_then(|m| m.get("tool_calls"))
                .and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    self.remember_id(id);
                }
            }
        }
    }

    fn remember_id(&self, id: &str) {
        let Some((bare, _)) = id.split_once(SIGNATURE_SEPARATOR) else {
            return;
        };
        let Some(signature) = signature_from_call_id(id) else {
            return;
        };
        let signature: Arc<str> = signature.into();
        local().insert(bare.to_owned(), signature.clone());
        if let Some(shared) = &self.shared {
            // Off the answer's path: the client needs the tool's result first.
            let shared = shared.clone();
            let key = format!("{KEY_PREFIX}{bare}");
            tokio::spawn(async move {
                if let Err(e) = shared.set_with_ttl(&key, &signature, TTL).await {
                    tracing::warn!("cannot store a thought signature: {e}");
                }
            });
        }
    }

    async fn find(&self, bare: &str) -> Option<String> {
        if let Some(signature) = local().get(bare) {
            return Some(signature.to_string());
        }
        let shared = self.shared.as_ref()?;
        match shared.get(&format!("{KEY_PREFIX}{bare}")).await {
            Ok(found) => {
                if let Some(signature) = &found {
                    local().insert(bare.to_owned(), signature.as_str().into());
                }
                found
            }
            Err(e) => {
                tracing::warn!("cannot read a thought signature: {e}");
                None
            }
        }
    }

    /// The thought signature `build_request` sends with the tool call `id` once
    /// [`Self::restore`] has run: the one the id carries, or the one kept in this
    /// process for a gateway id that came back without it. `None` when only the
    /// shared backend can tell (a gateway id not kept here), which is a wait the
    /// caller leaves to `restore`.
    pub fn signature_now(&self, id: &str) -> Option<Option<String>> {
        if id.contains(SIGNATURE_SEPARATOR) || !is_gateway_id(id) {
            return Some(signature_from_call_id(id));
        }
        match local().get(id) {
            Some(signature) => Some(signature_from_call_id(&super::ids::with_signature(
                id, &signature,
            ))),
            None if self.shared.is_some() => None,
            None => Some(None),
        }
    }

    /// The call with the signatures of its assistant tool calls restored where the
    /// client sent the ids back without them; `None` when nothing needed restoring.
    /// The ids are rewritten consistently in the assistant's calls and in the tool
    /// results that answer them, so that results still find their calls.
    pub async fn restore(&self, call: &UpstreamCall) -> Option<UpstreamCall> {
        let mut restored: HashMap<String, String> = HashMap::new();
        for message in call.messages() {
            let calls = message.get("tool_calls").and_then(Value::as_array);
            for tool_call in calls.into_iter().flatten() {
                let Some(id) = tool_call.get("id").and_then(Value::as_str) else {
                    continue;
                };
                if !is_gateway_id(id) || restored.contains_key(id) {
                    continue;
                }
                if let Some(signature) = self.find(id).await {
                    let with = super::ids::with_signature(id, &signature);
                    if with != id {
                        restored.insert(id.to_owned(), with);
                    }
                }
            }
        }
        if restored.is_empty() {
            return None;
        }
        let mut call = call.clone();
        if let Some(Value::Array(messages)) = call.params.get_mut("messages") {
            for message in messages {
                if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                    for tool_call in calls {
                        rewrite(tool_call.get_mut("id"), &restored);
                    }
                }
                rewrite(message.get_mut("tool_call_id"), &restored);
            }
        }
        Some(call)
    }
}

/// An id this gateway makes (`call_<stem>_<candidate>_<ordinal>`, see `ids`) without
/// a signature: only those can have one kept, so others cost no lookup (a round trip
/// each with a shared backend).
fn is_gateway_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("call_") else {
        return false;
    };
    if id.contains(SIGNATURE_SEPARATOR) {
        return false;
    }
    let mut parts = rest.rsplitn(3, '_');
    let numeric = |part: Option<&str>| {
        part.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_some_and(|s| !s.is_empty())
}

fn rewrite(id: Option<&mut Value>, restored: &HashMap<String, String>) {
    if let Some(id) = id {
        if let Some(with) = id.as_str().and_then(|s| restored.get(s)) {
            *id = Value::String(with.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn stripped_ids_get_their_signatures_back() {
        let store = SignatureStore::default();
        let signed = super::super::ids::tool_call_id("unitstem", 0, 0, Some("CiQB4/H+abc="));
        store.remember(
            &json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": signed}]}}]}),
        );
        let call = UpstreamCall {
            model: "gemini-3-pro".into(),
            params: json!({"messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_unitstem_0_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "call_unknown_0_1", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_unitstem_0_0", "content": "1"},
                {"role": "tool", "tool_call_id": "call_unknown_0_1", "content": "2"}
            ]})
            .as_object()
            .unwrap()
            .clone(),
            headers: http::HeaderMap::new(),
            header_case: Default::default(),
            gateway_usage: false,
            raw_body: None,
        };
        let restored = store.restore(&call).await.expect("one id restored");
        let messages = restored.messages();
        assert_eq!(messages[1]["tool_calls"][0]["id"], signed.as_str());
        assert_eq!(messages[1]["tool_calls"][1]["id"], "call_unknown_0_1");
        assert_eq!(messages[2]["tool_call_id"], signed.as_str());
        assert_eq!(messages[3]["tool_call_id"], "call_unknown_0_1");
        assert_eq!(
            signature_from_call_id(messages[1]["tool_calls"][0]["id"].as_str().unwrap()).as_deref(),
            Some("CiQB4/H+abc=")
        );
        assert!(is_gateway_id("call_resp-42_0_1"));
        for other in [
            "call_abc",
            "toolu_01",
            "call_x_1_y",
            "call__0_0",
            "call_s_0_0__thought__AA",
        ] {
            assert!(!is_gateway_id(other), "{other}");
        }
        // Ids that still carry their signature, or none known: nothing to do.
        let mut untouched = call.clone();
        untouched.params["messages"][1]["tool_calls"][0]["id"] = json!(signed);
        untouched.params["messages"][2]["tool_call_id"] = json!(signed);
        assert!(store.restore(&untouched).await.is_none());
    }
}
