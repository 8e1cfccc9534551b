//! `lm_proxy.strategies.Fallback`: a connection made of other connections, tried in
//! order until one answers. Non-streamed calls return the first success. Streamed
//! calls fall over only until the first chunk is in hand (the client has received
//! nothing yet); after that a failure reaches the client as the usual error chunk.
//! Every failure that is fallen over is logged.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::doors::{DoorCall, Embeddings, TextCompletion};
use super::{Provider, UpstreamCall};
use crate::error::ApiError;
use crate::payload::{into_chunk_stream, Payload, PayloadStream};
use crate::secrets::Redactor;
use crate::streaming::ChunkStream;

/// One connection of the chain with what it changes in the call.
pub struct FallbackMember {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// `name.model` in a list, or `model` in a dict of overrides.
    pub model: Option<String>,
    /// Other parameter overrides (dict form).
    pub overrides: Map<String, Value>,
}

pub struct Fallback {
    name: String,
    members: Vec<FallbackMember>,
    /// Failures are logged; upstream messages may echo credentials.
    redactor: Redactor,
}

impl Fallback {
    pub fn new(name: &str, members: Vec<FallbackMember>, redactor: Redactor) -> Self {
        Fallback {
            name: name.to_owned(),
            members,
            redactor,
        }
    }

    fn call_for(&self, member: &FallbackMember, call: &UpstreamCall) -> UpstreamCall {
        let mut call = call.clone();
        if let Some(model) = &member.model {
            call.model = model.clone();
        }
        for (k, v) in &member.overrides {
            call.params.insert(k.clone(), v.clone());
        }
        call
    }

    /// A member's door call: its model and overrides, in the fields and in the body
    /// (only `model` replaced on the client's bytes when there are no overrides).
    fn door_call_for(
        &self,
        member: &FallbackMember,
        call: &DoorCall,
    ) -> Result<DoorCall, ApiError> {
        let mut call = call.clone();
        call.connection = member.name.clone();
        if let Some(model) = &member.model {
            call.model = model.clone();
        }
        if member.overrides.is_empty() {
            call.body = crate::api::messages::with_model(call.body, &call.model)?;
            return Ok(call);
        }
        for (k, v) in &member.overrides {
            call.params.insert(k.clone(), v.clone());
        }
        let mut body = Map::with_capacity(call.params.len() + 1);
        body.insert("model".into(), call.model.clone().into());
        body.extend(call.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        call.body = serde_json::to_vec(&body)
            .map_err(|e| ApiError::internal(format!("could not write the request: {e}")))?
            .into();
        Ok(call)
    }

    /// The first member's answer to a door call (`ask` calls that member's provider);
    /// a member that fails, or cannot serve the door, is fallen over.
    async fn first_door_answer<T, F, Fut>(&self, call: &DoorCall, ask: F) -> Result<T, ApiError>
    where
        F: Fn(Arc<dyn Provider>, DoorCall) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut last_error = None;
        for (i, member) in self.members.iter().enumerate() {
            let answer = match self.door_call_for(member, call) {
                Ok(call) => ask(member.provider.clone(), call).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    self.log_failure(member, &e, i + 1 < self.members.len());
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::internal("fallback without connections")))
    }

    fn log_failure(&self, member: &FallbackMember, error: &ApiError, has_next: bool) {
        let error = self.redactor.redact_text(&error.to_string());
        if has_next {
            tracing::warn!(
                "fallback '{}': connection '{}' failed ({}), trying the next one",
                self.name,
                member.name,
                error
            );
        } else {
            tracing::warn!(
                "fallback '{}': connection '{}' failed ({}), the last one",
                self.name,
                member.name,
                error
            );
        }
    }
}

#[async_trait]
impl Provider for Fallback {
    async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
        self.complete_payload(call).await.map(Payload::into_value)
    }

    async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
        self.stream_payload(call).await.map(into_chunk_stream)
    }

    /// The first member that embeds (a member that cannot, such as an Anthropic
    /// connection, is fallen over like one that fails).
    async fn embeddings(&self, call: DoorCall) -> Result<Embeddings, ApiError> {
        self.first_door_answer(&call, |provider, call| async move {
            provider.embeddings(call).await
        })
        .await
    }

    /// The first member that answers; a stream falls over only until the upstream
    /// accepted it.
    async fn text_completion(&self, call: DoorCall) -> Result<TextCompletion, ApiError> {
        self.first_door_answer(&call, |provider, call| async move {
            provider.text_completion(call).await
        })
        .await
    }

    async fn complete_payload(&self, call: UpstreamCall) -> Result<Payload, ApiError> {
        let mut last_error = None;
        for (i, member) in self.members.iter().enumerate() {
            match member
                .provider
                .complete_payload(self.call_for(member, &call))
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    self.log_failure(member, &e, i + 1 < self.members.len());
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::internal("fallback without connections")))
    }

    async fn stream_payload(&self, call: UpstreamCall) -> Result<PayloadStream, ApiError> {
        let mut last_error = None;
        for (i, member) in self.members.iter().enumerate() {
            let has_next = i + 1 < self.members.len();
            let call = self.call_for(member, &call);
            let mut stream = match member.provider.stream_payload(call).await {
                Ok(stream) => stream,
                Err(e) => {
                    self.log_failure(member, &e, has_next);
                    last_error = Some(e);
                    continue;
                }
            };
            match stream.next().await {
                Some(Ok(first)) => {
                    let first = futures_util::stream::once(async move { Ok(first) });
                    return Ok(Box::pin(first.chain(stream)));
                }
                Some(Err(e)) => {
                    self.log_failure(member, &e, has_next);
                    last_error = Some(e);
                }
                None => return Ok(Box::pin(futures_util::stream::empty())),
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::internal("fallback without connections")))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    const SECRET: &str = "sk-fallback-secret-1234";

    /// What a fake member does with a call.
    #[derive(Clone, Copy)]
    enum Act {
        /// Answers (one chunk when streamed).
        Answer,
        /// Fails before answering.
        Refuse,
        /// Streams an error as its first item.
        FirstChunkError,
        /// Streams nothing at all.
        Empty,
    }

    struct Fake {
        name: &'static str,
        act: Act,
        calls: AtomicUsize,
    }

    impl Fake {
        fn failure(&self) -> ApiError {
            // Upstream errors may echo the credential they were sent.
            ApiError::upstream_failure(format!("{} said: bad key {SECRET}", self.name))
        }
    }

    #[async_trait]
    impl Provider for Fake {
        async fn complete(&self, call: UpstreamCall) -> Result<Value, ApiError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.act {
                Act::Answer => Ok(json!({"from": self.name, "model": call.model})),
                _ => Err(self.failure()),
            }
        }

        async fn stream(&self, call: UpstreamCall) -> Result<ChunkStream, ApiError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let items: Vec<Result<Value, ApiError>> = match self.act {
                Act::Answer => vec![
                    Ok(json!({"from": self.name, "model": call.model})),
                    Ok(json!({"from": self.name, "n": 2})),
                ],
                Act::Refuse => return Err(self.failure()),
                Act::FirstChunkError => vec![Err(self.failure()), Ok(json!({"never": "read"}))],
                Act::Empty => vec![],
            };
            Ok(Box::pin(futures_util::stream::iter(items)))
        }
    }

    fn chain(acts: &[Act]) -> (Fallback, Vec<Arc<Fake>>) {
        const NAMES: [&str; 3] = ["first", "second", "third"];
        let fakes: Vec<Arc<Fake>> = acts
            .iter()
            .zip(NAMES)
            .map(|(act, name)| {
                Arc::new(Fake {
                    name,
                    act: *act,
                    calls: AtomicUsize::new(0),
                })
            })
            .collect();
        let members = fakes
            .iter()
            .map(|fake| FallbackMember {
                name: fake.name.to_owned(),
                provider: fake.clone(),
                model: Some(format!("{}-model", fake.name)),
                overrides: Map::new(),
            })
            .collect();
        let fallback = Fallback::new("chain", members, Redactor::new([SECRET.to_owned()]));
        (fallback, fakes)
    }

    fn call() -> UpstreamCall {
        UpstreamCall {
            model: "asked".into(),
            params: Map::from_iter([("stream".to_owned(), json!(true))]),
            headers: http::HeaderMap::new(),
            header_case: Default::default(),
            gateway_usage: false,
            raw_body: None,
        }
    }

    fn calls(fakes: &[Arc<Fake>]) -> Vec<usize> {
        fakes
            .iter()
            .map(|f| f.calls.load(Ordering::SeqCst))
            .collect()
    }

    async fn collect(stream: PayloadStream) -> Vec<Value> {
        stream
            .map(|item| item.expect("no error after the first chunk").into_value())
            .collect()
            .await
    }

    /// Log lines written while `f` runs on this thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn start(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn a_first_chunk_that_is_an_error_falls_over_to_the_next_member() {
        let log = Captured::default();
        let _guard = log.start();
        let (fallback, fakes) = chain(&[Act::FirstChunkError, Act::Answer]);
        let chunks = collect(fallback.stream_payload(call()).await.unwrap()).await;
        assert_eq!(
            chunks,
            [
                json!({"from": "second", "model": "second-model"}),
                json!({"from": "second", "n": 2})
            ]
        );
        assert_eq!(calls(&fakes), [1, 1]);
        // The failure fallen over is logged, without the key the upstream echoed.
        let text = log.text();
        assert!(
            text.contains("fallback 'chain': connection 'first' failed")
                && text.contains("trying the next one")
                && text.contains("first said: bad key ***"),
            "{text}"
        );
        assert!(!text.contains(SECRET), "{text}");
    }

    #[tokio::test]
    async fn when_every_first_chunk_is_an_error_the_last_error_is_the_answer() {
        let log = Captured::default();
        let _guard = log.start();
        let (fallback, fakes) = chain(&[Act::Refuse, Act::FirstChunkError]);
        let Err(error) = fallback.stream_payload(call()).await else {
            panic!("an answer from failing members");
        };
        // Nothing reached the client yet, so the error gets a status, not a chunk.
        assert!(
            matches!(&error, ApiError::UpstreamFailure { detail } if detail.starts_with("second said")),
            "{error:?}"
        );
        assert_eq!(calls(&fakes), [1, 1]);
        let text = log.text();
        assert!(text.contains("connection 'first' failed"), "{text}");
        assert!(
            text.contains("connection 'second' failed") && text.contains("the last one"),
            "{text}"
        );
        assert!(!text.contains(SECRET), "{text}");
    }

    /// An empty stream is what the member answered (as the reference's Fallback,
    /// which only falls over on exceptions): it is passed on, and the next member
    /// is not asked.
    #[tokio::test]
    async fn an_empty_stream_is_passed_on_without_falling_over() {
        let (fallback, fakes) = chain(&[Act::Empty, Act::Answer]);
        let chunks = collect(fallback.stream_payload(call()).await.unwrap()).await;
        assert!(chunks.is_empty(), "{chunks:?}");
        assert_eq!(calls(&fakes), [1, 0]);
    }

    #[tokio::test]
    async fn non_streamed_calls_take_the_first_success_with_the_members_model() {
        let log = Captured::default();
        let _guard = log.start();
        let (fallback, fakes) = chain(&[Act::Refuse, Act::Refuse, Act::Answer]);
        let answer = fallback.complete(call()).await.unwrap();
        assert_eq!(answer, json!({"from": "third", "model": "third-model"}));
        assert_eq!(calls(&fakes), [1, 1, 1]);
        let text = log.text();
        assert_eq!(text.matches("trying the next one").count(), 2, "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }
}
