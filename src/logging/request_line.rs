//! The per-request `tracing` line: one INFO line per finished request with its
//! status, model, connection and duration, and no secret in it (the client key is
//! never logged; `api_key_id` stands for it). Debug mode adds error details.
//! Streams are logged when they end, including when the client goes away.
//!
//! The line's target, `lm_proxy::request` ([`super::output::REQUEST_TARGET`]), is
//! what sends it through the batching stderr output ([`super::output`]): it reaches
//! stderr up to 100 ms later, in one `write` with other request lines.

use std::borrow::Cow;
use std::fmt::Write as _;

use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::output::{LogOutput, REQUEST_TARGET};
use crate::context::RequestContext;
use crate::error::{debug_details, ApiError};

/// The fields of a finished request that the log line shows: borrowed from the
/// request's context while it is at hand (a whole answer, a failure), owned for a
/// stream, whose line is written when it ends ([`RequestSummary::into_owned`]).
#[derive(Debug, Clone)]
pub struct RequestSummary<'a> {
    pub id: Cow<'a, str>,
    pub endpoint: crate::context::Endpoint,
    pub requested_model: Option<Cow<'a, str>>,
    pub connection: Option<Cow<'a, str>>,
    pub upstream_model: Option<Cow<'a, str>>,
    pub group: Option<Cow<'a, str>>,
    pub stream: bool,
    pub started: std::time::Instant,
    /// The wall-clock time at `started`.
    pub created_at: std::time::SystemTime,
}

impl<'a> RequestSummary<'a> {
    pub fn of(ctx: &'a RequestContext) -> Self {
        let asked = ctx.asked();
        let borrowed = |text: &'a Option<String>| text.as_deref().map(Cow::Borrowed);
        RequestSummary {
            id: Cow::Borrowed(&ctx.id),
            endpoint: ctx.endpoint,
            requested_model: asked.model.map(Cow::Borrowed),
            connection: borrowed(&ctx.connection),
            upstream_model: borrowed(&ctx.model),
            group: borrowed(&ctx.group),
            stream: asked.stream,
            started: ctx.started,
            created_at: ctx.created_at,
        }
    }

    /// The summary of a context that is dropped after it, its strings moved out
    /// of it rather than copied (a stream's line is written at its end, when the
    /// context is long gone unless a logger holds it).
    pub fn taken_from(ctx: &mut RequestContext) -> RequestSummary<'static> {
        let asked = ctx.asked();
        let stream = asked.stream;
        let requested_model = match ctx.request.get_mut("model") {
            Some(serde_json::Value::String(model)) => Some(Cow::Owned(std::mem::take(model))),
            _ => None,
        };
        let taken = |text: &mut Option<String>| text.take().map(Cow::Owned);
        RequestSummary {
            id: Cow::Owned(std::mem::take(&mut ctx.id)),
            endpoint: ctx.endpoint,
            requested_model,
            connection: taken(&mut ctx.connection),
            upstream_model: taken(&mut ctx.model),
            group: taken(&mut ctx.group),
            stream,
            started: ctx.started,
            created_at: ctx.created_at,
        }
    }

    /// The summary with its strings copied, to outlive the context.
    pub fn into_owned(self) -> RequestSummary<'static> {
        let owned = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        RequestSummary {
            id: Cow::Owned(self.id.into_owned()),
            endpoint: self.endpoint,
            requested_model: owned(self.requested_model),
            connection: owned(self.connection),
            upstream_model: owned(self.upstream_model),
            group: owned(self.group),
            stream: self.stream,
            started: self.started,
            created_at: self.created_at,
        }
    }

    /// Emit the request line. `status` is the HTTP status sent; for streams, an error
    /// that happened after the headers is reported in `error`.
    ///
    /// The line is put together here. Through the fmt layer's own formatting (ten
    /// fields, or one message) it cost about 10 % of the proxy's instructions per
    /// request: it visits each field generically and escapes text one character at
    /// a time. The text is the same as it was (`key=value`, strings quoted as `Debug`
    /// quotes them, which also escapes control characters).
    pub fn log(&self, status: u16, error: Option<&ApiError>, note: &str) {
        self.log_to::<std::io::Stderr>(status, error, note);
    }

    /// [`RequestSummary::log`], written straight into the batch of a `LogOutput<S>`
    /// when the current subscriber writes to one (the process's own, set up by
    /// `cli::init_tracing`): the line goes into the batch whole, with the time and
    /// level the fmt layer would have put before it, without the event's trip
    /// through the subscriber (about 750 instructions of the line's 3,000: callgrind,
    /// non-streamed). Whether the line is wanted is still the subscriber's filter's
    /// answer. Any other subscriber (a host application's, a test's) gets the line
    /// as a `tracing` event, which [`RequestLineFormat`] writes the same way.
    fn log_to<S: std::io::Write + Send + 'static>(
        &self,
        status: u16,
        error: Option<&ApiError>,
        note: &str,
    ) {
        let server_side = error.is_some_and(ApiError::is_server_side);
        let (level, wanted) = if server_side {
            let wanted = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::WARN);
            (tracing::Level::WARN, wanted)
        } else {
            let wanted = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO);
            (tracing::Level::INFO, wanted)
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
        let error_text = error_text.as_deref();
        let written = tracing::dispatcher::get_default(|dispatch| {
            let output = dispatch.downcast_ref::<LogOutput<S>>()?;
            let elapsed = self.started.elapsed();
            // The line's time from the request's start and its duration: one clock
            // read for both. Past a second the wall clock is read, as it may have
            // been set meanwhile.
            let time = if elapsed < std::time::Duration::from_secs(1) {
                self.created_at + elapsed
            } else {
                std::time::SystemTime::now()
            };
            let mut text = String::with_capacity(256);
            let _ = push_prefix(&mut text, level, time);
            self.push_line(&mut text, status, error_text, note, elapsed);
            text.push('\n');
            output.add_request_line(text.as_bytes());
            Some(())
        });
        if written.is_some() {
            return;
        }
        let mut line = String::with_capacity(200);
        self.push_line(&mut line, status, error_text, note, self.started.elapsed());
        if server_side {
            tracing::warn!(target: REQUEST_TARGET, line = line.as_str());
        } else {
            tracing::info!(target: REQUEST_TARGET, line = line.as_str());
        }
    }

    /// `chat completion<note> id=... status=... model="..." connection="..."
    /// upstream_model="..." group="..." stream=... duration_ms=... error="..."`.
    /// Appended to `line`.
    fn push_line(
        &self,
        line: &mut String,
        status: u16,
        error: Option<&str>,
        note: &str,
        elapsed: std::time::Duration,
    ) {
        fn text<'t>(v: &'t Option<Cow<'_, str>>) -> &'t str {
            v.as_deref().unwrap_or("-")
        }
        // The chat door's lines read as they always have; other doors name theirs.
        line.push_str(match self.endpoint {
            crate::context::Endpoint::ChatCompletions => "chat completion",
            crate::context::Endpoint::Messages => "messages",
            crate::context::Endpoint::CountTokens => "messages count_tokens",
            crate::context::Endpoint::Embeddings => "embeddings",
            crate::context::Endpoint::Completions => "text completion",
            crate::context::Endpoint::Responses => "responses",
        });
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
            push_quoted(line, value);
        }
        line.push_str(if self.stream {
            " stream=true"
        } else {
            " stream=false"
        });
        // Milliseconds with one decimal, rounded, without float formatting.
        let tenths = (elapsed.as_micros() + 50) / 100;
        line.push_str(" duration_ms=");
        line.push_str(itoa::Buffer::new().format(tenths / 10));
        line.push('.');
        line.push_str(itoa::Buffer::new().format(tenths % 10));
        line.push_str(" error=");
        push_quoted(line, error.unwrap_or(""));
    }

    #[cfg(test)]
    fn line(&self, status: u16, error: Option<&str>, note: &str) -> String {
        let mut line = String::new();
        self.push_line(&mut line, status, error, note, self.started.elapsed());
        line
    }
}

/// What the default format puts before an event's text: `<RFC 3339 time, µs>
/// <level padded to 5> lm_proxy::request: ` (without its generic formatting, which
/// was a quarter of the cost of a request line).
fn push_prefix(
    out: &mut impl std::fmt::Write,
    level: tracing::Level,
    time: std::time::SystemTime,
) -> std::fmt::Result {
    push_time(out, time)?;
    out.write_str(match level {
        tracing::Level::WARN => "  WARN ",
        tracing::Level::ERROR => " ERROR ",
        tracing::Level::DEBUG => " DEBUG ",
        tracing::Level::TRACE => " TRACE ",
        _ => "  INFO ",
    })?;
    out.write_str(REQUEST_TARGET)?;
    out.write_str(": ")
}

/// Length of `YYYY-MM-DDTHH:MM:SS.`, the part of a time that changes once a second.
const TIME_TO_SECONDS: usize = 20;

thread_local! {
    /// The second last written by this thread and its text up to the fraction.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; TIME_TO_SECONDS])> =
        const { std::cell::Cell::new((u64::MAX, [0; TIME_TO_SECONDS])) };
}

/// `time` as RFC 3339 in UTC with microseconds (`2026-12-06T14:30:42.695901Z`), as
/// humantime and tracing-subscriber's default timer write it. Request lines come
/// many to a second: the date and time of day are written once a second per thread
/// and kept, and only the microseconds are written each time (humantime's
/// formatting was about 500 instructions of a request's 39,000).
fn push_time(out: &mut impl std::fmt::Write, time: std::time::SystemTime) -> std::fmt::Result {
    // A clock set before 1970 is written as 1970's first microsecond (humantime
    // panics on such a time).
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let time = std::time::UNIX_EPOCH + since_epoch;
    let second = since_epoch.as_secs();
    let (cached, mut text) = LAST_SECOND.get();
    if cached != second {
        let mut whole = String::with_capacity(32);
        write!(whole, "{}", humantime::format_rfc3339_micros(time))?;
        // Years past 9999 make a longer text; those are written whole each time.
        if whole.len() != TIME_TO_SECONDS + 7 {
            return out.write_str(&whole);
        }
        text.copy_from_slice(&whole.as_bytes()[..TIME_TO_SECONDS]);
        LAST_SECOND.set((second, text));
    }
    let mut micros = [b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut n = since_epoch.subsec_micros();
    for digit in micros[..6].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: both parts are ASCII digits and punctuation (humantime's RFC 3339
    // text and the digits above), so UTF-8; checking them again cost about 140
    // instructions a request line.
    out.write_str(unsafe { std::str::from_utf8_unchecked(&text) })?;
    out.write_str(unsafe { std::str::from_utf8_unchecked(&micros) })
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
            return write_escaped_event(&self.default, ctx, writer, event);
        }
        push_prefix(&mut writer, *metadata.level(), std::time::SystemTime::now())?;
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

/// An event in the default format, on one line whatever its text holds: values
/// that reach a log line may come from upstreams or clients (an upstream's error
/// message, a Gemini `finishReason`), and a line break in one of them would start
/// a forged log line. tracing-subscriber escapes ESC in messages, not line breaks;
/// so the event is formatted into a buffer and its control characters (C0, DEL,
/// C1) and Unicode line separators are written as Rust escapes (`\n`, `\r`,
/// `\u{1b}`), as the request line's quoted values are. Not the request line's
/// path: those events are rare (startup, warnings, debug output).
fn write_escaped_event<S, N>(
    format: &Format<Full, SystemTime>,
    ctx: &FmtContext<'_, S, N>,
    mut writer: Writer<'_>,
    event: &tracing::Event<'_>,
) -> std::fmt::Result
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut text = String::with_capacity(256);
    format.format_event(ctx, Writer::new(&mut text), event)?;
    let body = text.strip_suffix('\n').unwrap_or(&text);
    if !body.chars().any(needs_escape) {
        return writer.write_str(&text);
    }
    let mut escaped = String::with_capacity(body.len() + 16);
    push_escaped(&mut escaped, body);
    escaped.push('\n');
    writer.write_str(&escaped)
}

/// Characters that must not reach a log line as they are: they end the line,
/// move the cursor or start a terminal escape sequence.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every [`needs_escape`] character written as Rust escapes it.
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
}

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
            endpoint: crate::context::Endpoint::ChatCompletions,
            id: "abc".into(),
            requested_model: Some("gpt-4o".into()),
            connection: Some("openai".into()),
            upstream_model: Some("say \"hi\"\n".into()),
            group: None,
            stream: true,
            started: std::time::Instant::now(),
            created_at: std::time::SystemTime::now(),
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

    /// A stream's line from the context's strings moved out of it reads as the
    /// line from copies of them.
    #[test]
    fn a_summary_taken_from_its_context_reads_as_one_copied() {
        let mut ctx = RequestContext::new(http::HeaderMap::new(), "127.0.0.1".into());
        ctx.endpoint = crate::context::Endpoint::Messages;
        ctx.request = serde_json::json!({"model": "claude-x", "stream": true})
            .as_object()
            .unwrap()
            .clone();
        ctx.connection = Some("anthropic".into());
        ctx.model = Some("claude-x-2".into());
        ctx.group = Some("team".into());
        let id = ctx.id.clone();
        let before_duration = |line: String| line.split(" duration_ms=").next().unwrap().to_owned();
        let copied = before_duration(RequestSummary::of(&ctx).into_owned().line(200, None, ""));
        let taken = before_duration(RequestSummary::taken_from(&mut ctx).line(200, None, ""));
        assert_eq!(taken, copied);
        assert!(copied.contains(r#"model="claude-x" connection="anthropic" upstream_model="claude-x-2" group="team" stream=true"#), "{copied}");
        assert!(
            copied.starts_with(&format!("messages id={id} status=200 ")),
            "{copied}"
        );
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

    /// Upstream text with line breaks and terminal escapes in a message or a field
    /// stays on its event's line, escaped.
    #[test]
    fn every_event_is_one_line_with_control_characters_escaped() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(RequestLineFormat::default())
            .finish();
        let forged = "STOP\n2026-01-01T00:00:00.000000Z  INFO lm_proxy::cli: forged\r\u{1b}[2K\u{9b}x\u{2028}y";
        let summary = RequestSummary {
            endpoint: crate::context::Endpoint::ChatCompletions,
            id: "abc".into(),
            requested_model: Some(forged.into()),
            connection: None,
            upstream_model: None,
            group: Some(forged.into()),
            stream: false,
            started: std::time::Instant::now(),
            created_at: std::time::SystemTime::now(),
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("unknown Gemini finishReason '{forged}'");
            tracing::warn!(reason = %forged, "display field");
            tracing::error!(reason = ?forged, "debug field");
            summary.log(200, None, "");
            summary.log(
                502,
                Some(&ApiError::upstream_failure(forged.to_owned())),
                "",
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(text.ends_with('\n'));
        for line in &lines {
            assert!(
                !line.chars().any(needs_escape),
                "a control character in {line:?}"
            );
            assert!(!line.contains("\u{2028}"), "{line:?}");
        }
        assert!(
            lines[0].ends_with(r"finishReason 'STOP\n2026-01-01T00:00:00.000000Z  INFO lm_proxy::cli: forged\r\x1b[2K\u{9b}x\u{2028}y'"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(r"reason=STOP\n2026"), "{}", lines[1]);
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
            endpoint: crate::context::Endpoint::ChatCompletions,
            id: "abc".into(),
            requested_model: Some("m\u{1b}[31m".into()),
            connection: None,
            upstream_model: None,
            group: None,
            stream: false,
            started: std::time::Instant::now(),
            created_at: std::time::SystemTime::now(),
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

    /// The kept second is written as humantime writes the whole time, at every
    /// microsecond of a second's edges, across days, months, years and leap days,
    /// and for times a thread sees out of order.
    #[test]
    fn times_are_written_as_humantime_writes_them() {
        use std::time::{Duration, UNIX_EPOCH};
        let seconds = [
            0u64,
            1,
            59,
            86_399,
            86_400,
            951_782_399, // 2000-02-28T23:59:59
            951_868_799, // 2000-02-29T23:59:59
            1_700_000_000,
            1_798_761_599, // 2026-12-31T23:59:59
            1_798_761_600,
            253_402_300_799, // 9999-12-31T23:59:59
        ];
        let micros = [0u32, 1, 9, 10, 99_999, 100_000, 500_000, 999_998, 999_999];
        for &second in seconds.iter().chain(seconds.iter().rev()) {
            for &micro in &micros {
                let time = UNIX_EPOCH + Duration::new(second, micro * 1000 + 999);
                let mut ours = String::new();
                push_time(&mut ours, time).unwrap();
                let theirs = humantime::format_rfc3339_micros(time).to_string();
                assert_eq!(ours, theirs, "second {second}, µs {micro}");
            }
        }
        // Past humantime's range the writing fails as humantime's does (year 10000
        // on), or the time is taken as 1970's first microsecond (before it).
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(push_time(&mut String::new(), far).is_err());
        assert!(write!(String::new(), "{}", humantime::format_rfc3339_micros(far)).is_err());
        let mut before = String::new();
        push_time(&mut before, UNIX_EPOCH - Duration::from_secs(1)).unwrap();
        assert_eq!(before, "1970-01-01T00:00:00.000000Z");
    }

    /// The text of `lines` with each line's time and duration taken out (they
    /// differ between two writes of one line).
    fn without_times(text: &str) -> Vec<String> {
        text.lines()
            .map(|line| {
                let (time, rest) = line.split_once(' ').unwrap();
                humantime::parse_rfc3339(time).unwrap();
                let (head, tail) = rest.split_once(" duration_ms=").unwrap();
                let (_, error) = tail.split_once(' ').unwrap();
                format!("{head} {error}")
            })
            .collect()
    }

    /// Under the process's own subscriber (`logging::subscriber`), a request line goes
    /// straight into its output's batch, with the same text as through the event
    /// path; only the lines the filter lets through are written.
    #[test]
    fn request_lines_go_straight_to_the_processs_output_with_the_same_text() {
        let out = Captured::default();
        let output = LogOutput::new(out.clone());
        let subscriber =
            crate::logging::subscriber(tracing_subscriber::EnvFilter::new("info"), output.clone());
        let dispatch = tracing::Dispatch::new(subscriber);
        assert!(dispatch.downcast_ref::<LogOutput<Captured>>().is_some());
        let summary = RequestSummary {
            endpoint: crate::context::Endpoint::Messages,
            id: "abc".into(),
            requested_model: Some("m\u{1b}[31m".into()),
            connection: Some("anthropic".into()),
            upstream_model: None,
            group: Some("default".into()),
            stream: true,
            started: std::time::Instant::now(),
            created_at: std::time::SystemTime::now(),
        };
        let failure = ApiError::upstream_failure("down");
        tracing::dispatcher::with_default(&dispatch, || {
            // Straight into `output` (its type is found in the subscriber)...
            summary.log_to::<Captured>(200, None, " (stream)");
            summary.log_to::<Captured>(502, Some(&failure), "");
            output.flush();
            // ...and through the subscriber (no `LogOutput<Stderr>` in it).
            summary.log_to::<std::io::Stderr>(200, None, " (stream)");
            summary.log_to::<std::io::Stderr>(502, Some(&failure), "");
            output.flush();
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = without_times(&text);
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0..2], lines[2..4], "{text}");
        assert_eq!(
            lines[0],
            r#" INFO lm_proxy::request: messages (stream) id=abc status=200 model="m\u{1b}[31m" connection="anthropic" upstream_model="-" group="default" stream=true error="""#
        );
        assert!(lines[1].starts_with(" WARN lm_proxy::request: messages id=abc status=502"));

        // The filter still decides: at `warn`, only the failure's line is written.
        let out = Captured::default();
        let output = LogOutput::new(out.clone());
        let subscriber =
            crate::logging::subscriber(tracing_subscriber::EnvFilter::new("warn"), output.clone());
        tracing::subscriber::with_default(subscriber, || {
            summary.log_to::<Captured>(200, None, "");
            summary.log_to::<Captured>(502, Some(&failure), "");
        });
        output.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = without_times(&text);
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains(" WARN lm_proxy::request: messages id=abc status=502"));
    }
}
