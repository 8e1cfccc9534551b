//! The per-request `tracing` line: one INFO line per finished request with its
//! status, model, connection and duration, and no secret in it (the client key is
//! never logged; `api_key_id` stands for it). Debug mode adds error details.
//! Streams are logged when they end, including when the client goes away.
//!
//! The line's target, `lm_proxy::request` ([`super::output::REQUEST_TARGET`]), is
//! what sends it through the batching stderr output ([`super::output`]): it reaches
//! stderr up to 100 ms later, in one `write` with other request lines.

use std::fmt::Write as _;

use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::output::REQUEST_TARGET;
use crate::context::RequestContext;
use crate::error::{debug_details, ApiError};

/// The fields of a finished request that the log line shows.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub id: String,
    pub requested_model: Option<String>,
    pub connection: Option<String>,
    pub upstream_model: Option<String>,
    pub group: Option<String>,
    pub stream: bool,
    pub started: std::time::Instant,
}

impl RequestSummary {
    pub fn of(ctx: &RequestContext) -> Self {
        RequestSummary {
            id: ctx.id.clone(),
            requested_model: ctx
                .request
                .get("model")
                .and_then(|m| m.as_str())
                .map(str::to_owned),
            connection: ctx.connection.clone(),
            upstream_model: ctx.model.clone(),
            group: ctx.group.clone(),
            stream: ctx.is_stream(),
            started: ctx.started,
        }
    }

    /// Emit the request line. `status` is the HTTP status sent; for streams, an error
    /// that happened after the headers is reported in `error`.
    ///
    /// The line is put together here and handed to `tracing` as one `line` field,
    /// which [`RequestLineFormat`] writes as it is. Through the fmt layer's own
    /// formatting (ten fields, or one message) it cost about 10 % of the proxy's
    /// instructions per request: it visits each field generically and escapes text
    /// one character at a time. The text is the same as it was (`key=value`, strings
    /// quoted as `Debug` quotes them, which also escapes control characters).
    pub fn log(&self, status: u16, error: Option<&ApiError>, note: &str) {
        let server_side = error.is_some_and(ApiError::is_server_side);
        let wanted = if server_side {
            tracing::enabled!(target: REQUEST_TARGET, tracing::Level::WARN)
        } else {
            tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO)
        };
        if !wanted {
            return;
        }
        let error_text = error.map(|e| {
            if debug_details() {
                e.to_string()
            } else {
                e.error_object()["code"]
                    .as_str()
                    .unwrap_or("error")
                    .to_owned()
            }
        });
        let line = self.line(status, error_text.as_deref(), note);
        if server_side {
            tracing::warn!(target: REQUEST_TARGET, line = line.as_str());
        } else {
            tracing::info!(target: REQUEST_TARGET, line = line.as_str());
        }
    }

    /// `chat completion<note> id=... status=... model="..." connection="..."
    /// upstream_model="..." group="..." stream=... duration_ms=... error="..."`.
    fn line(&self, status: u16, error: Option<&str>, note: &str) -> String {
        fn text(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        let mut line = String::with_capacity(200);
        line.push_str("chat completion");
        line.push_str(note);
        line.push_str(" id=");
        line.push_str(&self.id);
        line.push_str(" status=");
        line.push_str(itoa::Buffer::new().format(status));
        for (key, value) in [
            (" model=", text(&self.requested_model)),
            (" connection=", text(&self.connection)),
            (" upstream_model=", text(&self.upstream_model)),
            (" group=", text(&self.group)),
        ] {
            line.push_str(key);
            push_quoted(&mut line, value);
        }
        line.push_str(if self.stream {
            " stream=true"
        } else {
            " stream=false"
        });
        // Milliseconds with one decimal, rounded, without float formatting.
        let tenths = (self.started.elapsed().as_micros() + 50) / 100;
        line.push_str(" duration_ms=");
        line.push_str(itoa::Buffer::new().format(tenths / 10));
        line.push('.');
        line.push_str(itoa::Buffer::new().format(tenths % 10));
        line.push_str(" error=");
        push_quoted(&mut line, error.unwrap_or(""));
        line
    }
}

/// The `tracing` event format of the process: request lines (a `line` field on
/// [`REQUEST_TARGET`]) as `<time> <LEVEL> lm_proxy::request: <line>`, written as
/// they are; every other event as tracing-subscriber's default format writes it
/// (the request lines look the same as under it).
#[derive(Default)]
pub struct RequestLineFormat {
    default: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for RequestLineFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let is_request_line = metadata.target() == REQUEST_TARGET
            && metadata.fields().iter().any(|f| f.name() == LINE_FIELD);
        if !is_request_line {
            return self.default.format_event(ctx, writer, event);
        }
        // The default format's text (`<RFC 3339 time, µs> <level padded to 5>
        // <target>: `) without its generic formatting, which was a quarter of the
        // cost of a request line.
        write!(
            writer,
            "{}",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        )?;
        writer.write_str(match *metadata.level() {
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::TRACE => " TRACE ",
            _ => "  INFO ",
        })?;
        writer.write_str(REQUEST_TARGET)?;
        writer.write_str(": ")?;
        let mut visitor = LineVisitor {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        writeln!(writer)
    }
}

const LINE_FIELD: &str = "line";

/// Writes the `line` field's text.
struct LineVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl tracing::field::Visit for LineVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == LINE_FIELD {
            self.result = self.writer.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == LINE_FIELD {
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

/// `value` in double quotes, escaped as `{:?}` escapes it (the common case, plain
/// printable ASCII, without going through the formatter).
fn push_quoted(line: &mut String, value: &str) {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(value);
        line.push('"');
    } else {
        let _ = write!(line, "{value:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_every_field_with_strings_quoted() {
        let summary = RequestSummary {
            id: "abc".into(),
            requested_model: Some("gpt-4o".into()),
            connection: Some("openai".into()),
            upstream_model: Some("say \"hi\"\n".into()),
            group: None,
            stream: true,
            started: std::time::Instant::now(),
        };
        let line = summary.line(502, Some("upstream_error"), " (stream)");
        let (head, tail) = line.split_once(" duration_ms=").unwrap();
        assert_eq!(
            head,
            r#"chat completion (stream) id=abc status=502 model="gpt-4o" connection="openai" upstream_model="say \"hi\"\n" group="-" stream=true"#
        );
        let (duration, error) = tail.split_once(' ').unwrap();
        assert!(duration.parse::<f64>().is_ok(), "{duration}");
        assert_eq!(error, r#"error="upstream_error""#);
        assert!(summary.line(200, None, "").ends_with(r#" error="""#));
    }

    /// A `Write` into a shared buffer, for a subscriber under test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_lines_are_written_as_built_and_other_events_as_by_default() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(RequestLineFormat::default())
            .finish();
        let summary = RequestSummary {
            id: "abc".into(),
            requested_model: Some("m\u{1b}[31m".into()),
            connection: None,
            upstream_model: None,
            group: None,
            stream: false,
            started: std::time::Instant::now(),
        };
        tracing::subscriber::with_default(subscriber, || {
            summary.log(200, None, "");
            summary.log(502, Some(&ApiError::upstream_failure("down")), "");
            tracing::info!(target: "lm_proxy::cli", answer = 42, "other event");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // The default format's time: RFC 3339 in UTC with microseconds.
        let default_time = lines[2].split_once(' ').unwrap().0;
        for (line, level, status) in [(lines[0], " INFO", 200), (lines[1], " WARN", 502)] {
            let (time, rest) = line.split_once(' ').unwrap();
            assert!(time.ends_with('Z') && time.contains('T'), "{line}");
            assert_eq!(time.len(), default_time.len(), "{time} vs {default_time}");
            assert_eq!(
                time.find('.'),
                default_time.find('.'),
                "{time} vs {default_time}"
            );
            humantime::parse_rfc3339(time).unwrap();
            let expected = format!(
                "{level} lm_proxy::request: chat completion id=abc status={status} model=\"m\\u{{1b}}[31m\""
            );
            assert!(rest.starts_with(&expected), "{rest:?} vs {expected:?}");
        }
        assert!(
            lines[1].ends_with(r#"error="upstream_error""#),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(" INFO lm_proxy::cli: other event answer=42"),
            "{}",
            lines[2]
        );
    }
}
