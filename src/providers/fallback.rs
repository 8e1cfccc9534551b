//! `lm_proxy.strategies.Fallback`: a connection made of other connections, tried in
//! order until one answers. Non-streamed calls return the first success. Streamed
//! calls fall over only until the first chunk is in hand (the client has received
//! nothing yet); after that a failure reaches the client as the usual error chunk.
//! Every failure that is fallen over is logged.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Map, Value};

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
