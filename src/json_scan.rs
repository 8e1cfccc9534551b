//! The check that lets an upstream's JSON object go to the client byte for byte: a
//! single validating pass over the text that also reports the few top-level members
//! the gateway looks at (see `payload::RawJson`).
//!
//! Why it is written here rather than taken from a crate: it runs on every streamed
//! chunk and every answer, and the alternatives measured (bench/README.md) were
//! either slower or let through text that `serde_json::from_slice::<Value>` rejects:
//! deserializing into `Option<&RawValue>` fields (what this replaced, 60 % more
//! instructions per chunk) skips members without rejecting lone surrogates,
//! out-of-range numbers or unbounded nesting; sonic-rs and jiter skip some checks
//! too. The contract is exact agreement with serde_json's `Value` parser (with the
//! `float_roundtrip` feature this crate builds with): the differential tests below
//! compare the two on truncations and byte edits of every sample at every position.

use serde_json::Value;

/// Deepest nesting accepted, counting the top-level object: serde_json's `Value`
/// parser stops at 128 levels.
const MAX_DEPTH: u32 = 127;

/// A top-level member's shape, for the members whose type matters.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape<T> {
    /// Absent, or `null`.
    Absent,
    Expected(T),
    /// Present with another type.
    Other,
}

/// What the scan reports about a JSON object it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLevel {
    /// `id`, `object`, `created` and `model` are each present and not `null`.
    pub id: bool,
    pub object: bool,
    pub created: bool,
    pub model: bool,
    /// `error` is present and not `null`.
    pub error: bool,
    /// `Expected(empty)` when `choices` is a list (`true`: the empty list, as in a
    /// stream's usage-only chunk).
    pub choices: Shape<bool>,
    /// `Expected(counts)` when `usage` is an object.
    pub usage: Shape<TokenCounts>,
    /// Where the `usage` member (key to the end of its value, `null` included) lies
    /// in the text, so that it can be cut out without parsing the text again
    /// (`payload::RawJson::without_usage`).
    pub usage_member: Option<(usize, usize)>,
    /// Some string of the text, a key or a value at any depth, holds a backslash
    /// escape (so a search of the raw text for a key's spelling may miss it).
    pub escapes: bool,
}

/// The token counts of a `usage` object that metrics count: each is the member's
/// value when it is an unsigned integer, as `Value::as_u64` reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenCounts {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    /// Part of `prompt` read from the provider's cache
    /// (`prompt_tokens_details.cached_tokens`); the usage ledger prices it apart.
    pub cached: Option<u64>,
    /// Part of `completion` spent reasoning
    /// (`completion_tokens_details.reasoning_tokens`), recorded by the ledger.
    pub reasoning: Option<u64>,
}

impl TokenCounts {
    /// The counts of a `usage` tree.
    pub fn of(usage: &Value) -> TokenCounts {
        let detail = |object: &str, member: &str| {
            usage
                .get(object)
                .filter(|d| d.is_object())
                .and_then(|d| d.get(member))
                .and_then(Value::as_u64)
        };
        TokenCounts {
            prompt: usage.get("prompt_tokens").and_then(Value::as_u64),
            completion: usage.get("completion_tokens").and_then(Value::as_u64),
            cached: detail("prompt_tokens_details", "cached_tokens"),
            reasoning: detail("completion_tokens_details", "reasoning_tokens"),
        }
    }
}

impl Default for TopLevel {
    fn default() -> Self {
        TopLevel {
            id: false,
            object: false,
            created: false,
            model: false,
            error: false,
            choices: Shape::Absent,
            usage: Shape::Absent,
            usage_member: None,
            escapes: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Member {
    Id,
    Object,
    Created,
    Model,
    Choices,
    Usage,
    Error,
    Other,
}

impl Member {
    fn of(key: &[u8]) -> Member {
        match key {
            b"id" => Member::Id,
            b"object" => Member::Object,
            b"created" => Member::Created,
            b"model" => Member::Model,
            b"choices" => Member::Choices,
            b"usage" => Member::Usage,
            b"error" => Member::Error,
            _ => Member::Other,
        }
    }
}

/// Check that `text` is one JSON object, valid throughout (as serde_json's `Value`
/// parser would accept it), in which none of the members above appears twice, and
/// report those members. `None` for anything else.
pub fn scan_object(text: &str) -> Option<TopLevel> {
    scan_members(text, None)
}

/// [`scan_object`] for the texts of one stream, in order, with the same answer for
/// every text but less work for the usual one. Two ways, tried in turn:
///
/// - a text that differs from the last one (accepted) only inside one string value
///   is that text again if that string, read anew, is a valid string that closes
///   where the changed bytes end: the scan's findings do not depend on what
///   characters a value string holds (only on where `usage` lies, moved by the
///   change in length). Where that string lies is known from the change before
///   (a stream's text chunks differ from each other only in their `content`), or
///   else found by counting quotes in a last text without escapes (each quote then
///   opens or closes a string, so the quotes before a position say whether it lies
///   in one). A string that needed escapes (a line break in the text) may be the
///   one that changes: the last text's escapes are then all inside it;
/// - a text that starts with the same bytes as an earlier text up to the `choices`
///   key is scanned from there, with what the scan knew at that point (what it
///   knows at the start of a top-level member depends only on the bytes before
///   it). OpenAI-compatible servers write the same `id`, `object`, `created`,
///   `model` and `system_fingerprint` at the front of every chunk of a stream,
///   about half of a text chunk.
pub fn scan_object_resuming(text: &str, memo: &mut ScanMemo) -> Option<TopLevel> {
    // Known to be UTF-8: the reading cannot fail.
    scan_resuming(text.as_bytes(), memo, true).unwrap_or(None)
}

/// The text given to [`scan_bytes_resuming`] is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// [`scan_object_resuming`] for bytes not yet known to be UTF-8 (an SSE event's
/// data as the upstream sent it): `Err` when they are not; `Ok` means they are. When
/// the text is found to be the last one but inside one string, only the bytes that
/// changed are checked, with those of the characters they cut into (a text chunk's
/// new word, where checking all of its bytes cost about 100 instructions); the
/// whole text otherwise.
pub fn scan_bytes_resuming(text: &[u8], memo: &mut ScanMemo) -> Result<Option<TopLevel>, NotUtf8> {
    scan_resuming(text, memo, false)
}

fn scan_resuming(
    text: &[u8],
    memo: &mut ScanMemo,
    utf8_known: bool,
) -> Result<Option<TopLevel>, NotUtf8> {
    if memo.id == 0 {
        memo.id = next_memo_id();
    }
    memo.seq += 1;
    if let Some(change) = memo.same_but_one_string(text) {
        if !utf8_known && !memo.utf8_around(text, &change.bytes) {
            memo.forget();
            return Err(NotUtf8);
        }
        let start = change.bytes.start;
        memo.changed = Some(change.bytes);
        if text.len() <= ScanMemo::MAX_LAST {
            // Kept for the next text: its bytes before the change are the last
            // text's already; its escapes, if any, are all inside the string it
            // changed. The last text's findings, moved to where this text has them,
            // are updated where they are kept (one copy of them a chunk, the answer).
            memo.last.truncate(start);
            memo.last.extend_from_slice(&text[start..]);
            memo.last_string = change.string;
            let found = memo.last_found.as_mut().expect("compared with a last text");
            found.escapes = change.escapes;
            found.usage_member = change.usage_member;
            return Ok(Some(found.clone()));
        }
        let mut found = memo.last_found.take().expect("compared with a last text");
        found.escapes = change.escapes;
        found.usage_member = change.usage_member;
        memo.last.clear();
        return Ok(Some(found));
    }
    memo.changed = None;
    let text = if utf8_known {
        // SAFETY: the caller had it as a `str`.
        unsafe { std::str::from_utf8_unchecked(text) }
    } else if let Some(text) = utf8(text) {
        text
    } else {
        memo.forget();
        return Err(NotUtf8);
    };
    let found = scan_members(text, Some(memo));
    memo.last.clear();
    match &found {
        // Kept when it has no escapes (where the next text changes it, they would
        // have to be found again).
        Some(top) if !top.escapes && text.len() <= ScanMemo::MAX_LAST => {
            memo.last.extend_from_slice(text.as_bytes());
            memo.last_found = Some(top.clone());
            memo.last_string = None;
        }
        _ => memo.last_found = None,
    }
    Ok(found)
}

/// How a text differs from the memo's last one when only inside one string
/// ([`ScanMemo::same_but_one_string`]): what the scan's findings become.
struct StringChange {
    /// The text's bytes outside which it is the last text.
    bytes: std::ops::Range<usize>,
    /// Where the changed string lies in the text (`None` when the texts are the
    /// same and the last one's was not known).
    string: Option<StringAt>,
    /// Whether the text has escapes (only ever inside that string).
    escapes: bool,
    /// Where its `usage` member lies.
    usage_member: Option<(usize, usize)>,
}

/// What [`scan_object_resuming`] keeps between the texts of a stream: the last
/// text and what the scan found in it, and that text's bytes before its top-level
/// `choices` key with the scan's state there. Every text kept is UTF-8 (checked,
/// or given as a `str`), which [`ScanMemo::utf8_around`] relies on.
#[derive(Default)]
pub struct ScanMemo {
    /// This memo among all of the process's ([`next_memo_id`]; 0 until its first
    /// text) and how many texts it has seen: with `changed`, what
    /// [`ScanMemo::last_change`] tells.
    id: u64,
    seq: u64,
    /// The bytes of the text just scanned outside which it is the text before it
    /// (`None` when that is not known).
    changed: Option<std::ops::Range<usize>>,
    last: Vec<u8>,
    /// `Some` when `last` was accepted and holds no escape outside `last_string`
    /// (none at all when that is `None`).
    last_found: Option<TopLevel>,
    /// The string value that the last text changed, where it lies in that text.
    /// The next chunk usually changes the same string (the `content`), and a change
    /// between its quotes is known to be inside a value without counting the quotes
    /// before it.
    last_string: Option<StringAt>,
    prefix: Vec<u8>,
    state: Option<AtMember>,
}

/// A top-level text's string value (not a key): the positions of its quotes, and
/// whether it holds escapes.
#[derive(Clone, Copy, Debug)]
struct StringAt {
    open: usize,
    close: usize,
    escaped: bool,
}

/// A copy goes on as a memo of its own: its texts are not numbered as the
/// original's are (two memos with one number would tell of different texts).
impl Clone for ScanMemo {
    fn clone(&self) -> Self {
        ScanMemo {
            id: 0,
            seq: self.seq,
            changed: self.changed.clone(),
            last: self.last.clone(),
            last_found: self.last_found.clone(),
            last_string: self.last_string,
            prefix: self.prefix.clone(),
            state: self.state.clone(),
        }
    }
}

/// Where a text scanned through a [`ScanMemo`] stands among the texts of its stream
/// ([`ScanMemo::last_change`]): a reader that looked at the text before it (the
/// search for echoed secrets) need only look at what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextPlace {
    /// The memo ([`next_memo_id`]) and the text's number among those it scanned
    /// (from 1).
    pub memo: u64,
    pub seq: u64,
    /// The text is the one numbered `seq - 1` but for these bytes of it (empty at
    /// the text's end when the two are the same); `None` when that is not known.
    pub changed: Option<std::ops::Range<usize>>,
}

/// A number no other memo of the process has: the serving thread's own count
/// above a number each thread takes once, so that nothing shared is written per
/// stream (40 bits a thread: a million streams a second for twelve days).
fn next_memo_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    NEXT.with(|next| {
        let mut id = next.get();
        if id == 0 || id & ((1 << 40) - 1) == 0 {
            id = (THREADS.fetch_add(1, Ordering::Relaxed) + 1) << 40;
        }
        next.set(id + 1);
        id + 1
    })
}

impl ScanMemo {
    /// The longest text kept whole: chunks are a few hundred bytes; a larger one is
    /// scanned whole and not copied.
    const MAX_LAST: usize = 4096;

    /// Where the text last scanned stands ([`TextPlace`]); `None` before the first.
    pub fn last_change(&self) -> Option<TextPlace> {
        (self.seq > 0).then(|| TextPlace {
            memo: self.id,
            seq: self.seq,
            changed: self.changed.clone(),
        })
    }

    /// Nothing known of a last text (after one that ends its stream).
    fn forget(&mut self) {
        self.changed = None;
        self.last.clear();
        self.last_found = None;
        self.last_string = None;
    }

    /// Whether `text`, the last text (which is UTF-8) but for its bytes `changed`,
    /// is UTF-8. The bytes before the change are the last text's up to a character
    /// boundary of it at or before the change's start (the start backed over the
    /// last text's continuation bytes); the bytes after the change are the end of
    /// the last text, which is UTF-8 from any byte that is not a continuation byte
    /// (the change's end moved past those). So the text is UTF-8 when the bytes
    /// between those two places are: the change and at most three bytes either side.
    fn utf8_around(&self, text: &[u8], changed: &std::ops::Range<usize>) -> bool {
        let continuation = |byte: u8| byte & 0xC0 == 0x80;
        let last = &self.last;
        let mut from = changed.start;
        while from > 0 && from < last.len() && continuation(last[from]) {
            from -= 1;
        }
        let mut to = changed.end;
        while to < text.len() && continuation(text[to]) {
            to += 1;
        }
        let window = &text[from..to];
        // The usual window is a word: std's byte loop costs less than the SIMD
        // check's fixed work.
        if window.len() < 64 {
            std::str::from_utf8(window).is_ok()
        } else {
            utf8(window).is_some()
        }
    }

    /// How `text` differs from the last text when only inside one string value, and
    /// so how the scan's findings for it differ from the last ones ([`StringChange`]);
    /// `None` when that is not known.
    fn same_but_one_string(&self, text: &[u8]) -> Option<StringChange> {
        let found = self.last_found.as_ref()?;
        let last = &self.last[..];
        let start = common_prefix(last, text);
        if start == last.len() && start == text.len() {
            return Some(StringChange {
                bytes: start..start,
                string: self.last_string,
                escapes: found.escapes,
                usage_member: found.usage_member,
            });
        }
        let room = last.len().min(text.len()) - start;
        let tail = common_suffix(&last[start..], &text[start..]).min(room);
        let (last_end, text_end) = (last.len() - tail, text.len() - tail);
        let known = self
            .last_string
            .filter(|string| string.open < start && last_end <= string.close);
        let string = match known {
            // Between the quotes of the value the last change was in (a value, it
            // was checked then): the usual chunk.
            Some(string) => string,
            None => {
                // Plain characters out of a string of a last text without escapes:
                // an odd number of quotes before `start` (each quote opens or
                // closes a string).
                if found.escapes || !plain(last, start, last_end) {
                    return None;
                }
                if memchr::memchr_iter(b'"', &last[..start]).count() % 2 == 0 {
                    return None;
                }
                let open = memchr::memrchr(b'"', &last[..start])?;
                let close = last_end + memchr::memchr(b'"', &last[last_end..])?;
                // A value, not a key (a key's spelling decides which member it is).
                let after = last[close + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if after == Some(&b':') {
                    return None;
                }
                StringAt {
                    open,
                    close,
                    escaped: false,
                }
            }
        };
        let moved = |at: usize| at - last_end + text_end;
        let close = moved(string.close);
        // Plain characters into a plain string leave it a plain string; otherwise
        // the string is read anew (its escapes whole and valid, no control
        // character) and must close where it did.
        let escaped = if !string.escaped && plain(text, start, text_end) {
            false
        } else {
            let mut scan = Scanner::new(text);
            scan.at = string.open;
            let escaped = scan.string()?;
            if scan.at != close + 1 {
                return None;
            }
            escaped
        };
        // Escapes are only ever in the changed string (or the last text would
        // not have been kept).
        let mut usage_member = found.usage_member;
        if let Some((from, to)) = usage_member {
            if from > string.close {
                usage_member = Some((moved(from), moved(to)));
            } else if to > start {
                // Inside `usage`: its keys and numbers are read.
                return None;
            }
        }
        Some(StringChange {
            bytes: start..text_end,
            string: Some(StringAt {
                open: string.open,
                close,
                escaped,
            }),
            escapes: escaped,
            usage_member,
        })
    }
}

/// Whether `text[start..end]` holds no quote, backslash or control character. A
/// short range (a chunk's new word) is looked at through one 16-byte window of
/// `text` around it, its other bytes masked off, instead of byte by byte.
#[inline(always)]
fn plain(text: &[u8], start: usize, end: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if end - start < 16 && text.len() >= 16 {
        let at = start.min(text.len() - 16);
        let range = ((1u32 << (end - start)) - 1) << (start - at);
        return string_stops_16(&text[at..]) & range == 0;
    }
    needs_no_escaping(&text[start..end])
}

/// How many bytes `a` and `b` have in common at their start. Thirty-two bytes at a
/// time compared as arrays (vector compares), then sixteen as one integer: the
/// first differing byte is the lowest set byte of their XOR (little-endian); the
/// last bytes are compared as the sixteen that end both, overlapping those already
/// compared, so that no byte loop runs unless a text is shorter than sixteen bytes
/// (the byte-at-a-time version was about 100 instructions an event of a stream:
/// callgrind, stream-20).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 32 <= n && block32(a, i) == block32(b, i) {
        i += 32;
    }
    while i + 16 <= n {
        let diff = u128_at(a, i) ^ u128_at(b, i);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    if i == n {
        return n;
    }
    if n >= 16 {
        let at = n - 16;
        let diff = u128_at(a, at) ^ u128_at(b, at);
        return if diff == 0 {
            n
        } else {
            at + (diff.trailing_zeros() / 8) as usize
        };
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// How many bytes `a` and `b` have in common at their end (as [`common_prefix`],
/// from the back: the last differing byte is the highest set byte of the XOR).
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + 32 <= n && block32(a, n - i - 32) == block32(b, n - i - 32) {
        i += 32;
    }
    while i + 16 <= n {
        let diff = u128_at(a, n - i - 16) ^ u128_at(b, n - i - 16);
        if diff != 0 {
            return i + (diff.leading_zeros() / 8) as usize;
        }
        i += 16;
    }
    if i == n {
        return n;
    }
    if n >= 16 {
        let diff = u128_at(a, 0) ^ u128_at(b, 0);
        return if diff == 0 {
            n
        } else {
            n - 16 + (diff.leading_zeros() / 8) as usize
        };
    }
    while i < n && a[n - i - 1] == b[n - i - 1] {
        i += 1;
    }
    i
}

/// The 32 bytes of `bytes` from `at`, as an array (compared with vector instructions).
#[inline(always)]
fn block32(bytes: &[u8], at: usize) -> [u8; 32] {
    bytes[at..at + 32].try_into().expect("32 bytes")
}

/// The 16 bytes of `bytes` from `at`, as a little-endian integer.
#[inline(always)]
fn u128_at(bytes: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(bytes[at..at + 16].try_into().expect("16 bytes"))
}

/// What a reader of a stream's events keeps to read the next event for the cost of a
/// comparison when it is the last one but for the text of one string value: the
/// usual streamed chunk, which repeats the last one's `id`, `model` and structure
/// and differs only in its `content` (or an Anthropic `text_delta`'s `text`).
///
/// The reader walks an event as usual and, when everything it took from it was one
/// plain string (no escapes), remembers the event and where that string lies
/// ([`StringMemo::remember`]). For the next event, [`StringMemo::string_span`]
/// answers where the string lies in it when the two texts differ only inside that
/// string, by characters that need no escaping: the rest is byte for byte what was
/// walked (so it is valid JSON with the same members and values), and the string
/// still opens and closes where it did, so the reader's findings are the same but
/// for the string's new value. Holding the last event is a reference count, not a
/// copy.
#[derive(Default, Clone, Debug)]
pub struct StringMemo {
    last: bytes::Bytes,
    /// The remembered string's characters in `last` (between its quotes); `None`
    /// when nothing is remembered.
    span: Option<std::ops::Range<usize>>,
}

impl StringMemo {
    /// Remember `text` (the event just walked) and the string whose characters are
    /// `value`, a slice of `text` that the walk returned as written (a string without
    /// escapes). Anything else forgets. Whether it was remembered.
    pub fn remember(&mut self, text: &bytes::Bytes, value: &str) -> bool {
        let start = (value.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let end = start.wrapping_add(value.len());
        // The walk's strings without escapes are slices between their quotes; a
        // value from anywhere else is not remembered.
        let between_quotes = end < text.len()
            && start > 0
            && text[start - 1] == b'"'
            && text[end] == b'"'
            && !value.as_bytes().contains(&b'\\');
        if between_quotes {
            self.last = text.clone();
            self.span = Some(start..end);
        } else {
            self.forget();
        }
        between_quotes
    }

    pub fn forget(&mut self) {
        self.last = bytes::Bytes::new();
        self.span = None;
    }

    /// Where the remembered string's characters lie in `text`, when `text` is the
    /// remembered event but for characters inside that string that need no
    /// escaping; `None` otherwise (the reader then walks `text`).
    pub fn string_span(&self, text: &[u8]) -> Option<std::ops::Range<usize>> {
        let span = self.span.as_ref()?;
        let last = &self.last[..];
        let start = common_prefix(last, text);
        if start == last.len() && start == text.len() {
            return Some(span.clone());
        }
        // The change begins inside the string (a change at its first character
        // leaves `start` there)...
        if start < span.start {
            return None;
        }
        let room = last.len().min(text.len()) - start;
        let tail = common_suffix(&last[start..], &text[start..]).min(room);
        let last_end = last.len() - tail;
        // ... and ends inside it: its closing quote is in the common tail.
        if last_end > span.end {
            return None;
        }
        let text_end = text.len() - tail;
        // What came in is plain characters: no quote, backslash or control character
        // (what went out was part of the string, which had none of the first two and
        // could hold no control character).
        if !plain(text, start, text_end) {
            return None;
        }
        Some(span.start..span.end + text_end - last_end)
    }

    /// Where another string of the remembered event (`range` in it, outside the
    /// remembered string) lies in the event whose remembered string lies at `span`
    /// ([`StringMemo::string_span`]): where it was if it comes before that string,
    /// moved by the change in its length if after.
    pub fn moved(
        &self,
        range: std::ops::Range<usize>,
        span: &std::ops::Range<usize>,
    ) -> std::ops::Range<usize> {
        match &self.span {
            Some(last) if range.start >= last.end => {
                let at = |i: usize| i + span.end - last.end;
                at(range.start)..at(range.end)
            }
            _ => range,
        }
    }

    /// Where `value`, a slice of the remembered event, lies in it; `None` for a
    /// slice of anything else.
    pub fn range_of(&self, value: &str) -> Option<std::ops::Range<usize>> {
        let start = (value.as_ptr() as usize).checked_sub(self.last.as_ptr() as usize)?;
        let end = start + value.len();
        (end <= self.last.len()).then_some(start..end)
    }

    /// What a reader keeps of another string it read from the remembered event: the
    /// range of a string read as written (see [`StringMemo::range_of`]), `Some(None)`
    /// for none; `None` for one decoded from escapes (the event is not kept then).
    pub fn range_of_read(
        &self,
        value: Option<&std::borrow::Cow<'_, str>>,
    ) -> Option<Option<std::ops::Range<usize>>> {
        match value {
            None => Some(None),
            Some(std::borrow::Cow::Borrowed(value)) => self.range_of(value).map(Some),
            Some(std::borrow::Cow::Owned(_)) => None,
        }
    }

    /// The characters at `range` of `text`; `None` where they do not fit or do not
    /// fall on character boundaries (never, for the ranges this memo answers: the
    /// reader then walks). A slice of a `str`, not a UTF-8 check of the bytes: that
    /// cost about 90 instructions a string, three or four strings an event.
    pub fn text_at(text: &str, range: std::ops::Range<usize>) -> Option<&str> {
        text.get(range)
    }

    /// Another string the reader read from the remembered event (`range` in it,
    /// `None` for none), where it lies in `text`, whose remembered string lies at
    /// `span` ([`StringMemo::string_span`]): `Some(None)` for none, `None` when it
    /// cannot be read (see [`StringMemo::text_at`]).
    pub fn moved_text<'a>(
        &self,
        text: &'a str,
        range: &Option<std::ops::Range<usize>>,
        span: &std::ops::Range<usize>,
    ) -> Option<Option<&'a str>> {
        match range {
            Some(range) => Self::text_at(text, self.moved(range.clone(), span)).map(Some),
            None => Some(None),
        }
    }
}

/// The state of the scan at the start of a top-level member (before its key).
#[derive(Clone)]
struct AtMember {
    at: usize,
    found: TopLevel,
    /// The known members seen so far, one bit each.
    seen: u8,
    escapes: bool,
}

// Inlined into both callers, so that `scan_object` (memo `None`) carries none of the
// memo's branches: every answer and every event of the other doors goes through it.
#[inline(always)]
fn scan_members(text: &str, mut memo: Option<&mut ScanMemo>) -> Option<TopLevel> {
    let bytes = text.as_bytes();
    let mut scan = Scanner::new(bytes);
    let mut found = TopLevel::default();
    let mut seen = 0u8;
    let resumed = memo
        .as_deref()
        .and_then(|memo| {
            memo.state
                .as_ref()
                .filter(|_| bytes.starts_with(&memo.prefix))
        })
        .cloned();
    if let Some(state) = &resumed {
        scan.at = state.at;
        scan.escapes = state.escapes;
        found = state.found.clone();
        seen = state.seen;
        // The earlier text may have had less whitespace before the key.
        scan.skip_whitespace();
    } else if scan.open_object()? {
        scan.skip_whitespace();
        return (scan.at == bytes.len()).then_some(found);
    }
    let mut first_member = resumed.is_none();
    loop {
        if scan.peek()? != b'"' {
            return None;
        }
        let key_start = scan.at;
        let escapes_before_key = scan.escapes;
        let escaped = scan.string()?;
        let member = if escaped {
            // Rare: let serde_json decode the escapes.
            let key: String = serde_json::from_slice(&bytes[key_start..scan.at]).ok()?;
            Member::of(key.as_bytes())
        } else {
            Member::of(&bytes[key_start + 1..scan.at - 1])
        };
        // Kept at the `choices` key unless the scan resumed there; not at the first
        // member: a text that has only `{` in common with the last may be `{}`,
        // which the resumed scan would not see.
        let keep = member == Member::Choices
            && !first_member
            && resumed.as_ref().map(|state| state.at) != Some(key_start);
        if let Some(memo) = memo.as_deref_mut().filter(|_| keep) {
            memo.prefix.clear();
            memo.prefix.extend_from_slice(&bytes[..key_start]);
            memo.state = Some(AtMember {
                at: key_start,
                found: found.clone(),
                seen,
                escapes: escapes_before_key,
            });
        }
        if member != Member::Other {
            let bit = 1u8 << (member as u8);
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        scan.colon()?;
        let value_start = scan.at;
        let first = scan.peek()?;
        // A `usage` object is checked and read in one pass (checked, then read
        // again, it was about 450 instructions of an answer).
        let counts = if member == Member::Usage && first == b'{' {
            Some(scan.token_counts()?)
        } else {
            scan.value()?;
            None
        };
        // A value that starts with `n` and passed is `null`.
        let present = first != b'n';
        match member {
            Member::Id => found.id = present,
            Member::Object => found.object = present,
            Member::Created => found.created = present,
            Member::Model => found.model = present,
            Member::Error => found.error = present,
            Member::Choices => {
                found.choices = match first {
                    b'n' => Shape::Absent,
                    // Empty when only whitespace lies between the brackets.
                    b'[' => Shape::Expected(
                        bytes[value_start + 1..scan.at - 1]
                            .iter()
                            .all(u8::is_ascii_whitespace),
                    ),
                    _ => Shape::Other,
                }
            }
            Member::Usage => {
                found.usage_member = Some((key_start, scan.at));
                found.usage = match (first, counts) {
                    (_, Some(counts)) => Shape::Expected(counts),
                    (b'n', None) => Shape::Absent,
                    _ => Shape::Other,
                }
            }
            Member::Other => {}
        }
        first_member = false;
        if scan.member_ends_object()? {
            break;
        }
    }
    scan.skip_whitespace();
    found.escapes = scan.escapes;
    (scan.at == bytes.len()).then_some(found)
}

/// Where the values of `text`'s top-level members named `key` are, as byte ranges
/// of `text`, in order; at most `limit` of them (the scan stops at the last one it
/// needs). For a door that passes its client's request or its upstream's events on
/// as written but must read or replace one member (the Anthropic door: `model` in
/// the body, `type` of each event). `None` when `text` does not start as a JSON
/// object; the text is expected to have been checked already (by serde_json or
/// [`scan_object`]).
///
/// Its own loop rather than a [`Walk`]: it runs per event on pass-through streams,
/// and through `Walk` it cost about 85 more instructions a call (callgrind,
/// messages-passthrough-20: 172,092 → 173,833 a stream).
pub fn member_spans(text: &str, key: &str, limit: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let bytes = text.as_bytes();
    let mut scan = Scanner::new(bytes);
    let mut spans = Vec::new();
    if scan.open_object()? {
        return Some(spans);
    }
    loop {
        if scan.peek()? != b'"' {
            return None;
        }
        let key_start = scan.at;
        let escaped = scan.string()?;
        let matches = if escaped {
            let decoded: String = serde_json::from_slice(&bytes[key_start..scan.at]).ok()?;
            decoded == key
        } else {
            &bytes[key_start + 1..scan.at - 1] == key.as_bytes()
        };
        scan.colon()?;
        let value_start = scan.at;
        scan.value()?;
        if matches {
            spans.push(value_start..scan.at);
            if spans.len() >= limit {
                return Some(spans);
            }
        }
        scan.skip_whitespace();
        match scan.peek()? {
            b',' => {
                scan.at += 1;
                scan.skip_whitespace();
            }
            b'}' => return Some(spans),
            _ => return None,
        }
    }
}

/// The string value of `text`'s first top-level member `key`, when it is a string
/// (escapes decoded only when there are any).
pub fn member_str<'a>(text: &'a str, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let span = member_spans(text, key, 1)?.pop()?;
    string_value(&text[span])
}

/// The string a JSON string literal (`raw`, quotes included, already checked)
/// stands for: borrowed when it has no escapes; `None` when `raw` is not a string.
pub fn string_value(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw)
            .ok()
            .map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(inner))
    }
}

/// A JSON string taken from a checked text to be written out again (the upstream
/// requests that `providers::*::raw_request` write from a client's). A client's
/// long texts (a tool's result, which is JSON in a string, a prompt with newlines)
/// are mostly escapes, and decoding them only to escape them again was a good part
/// of writing an agent's request (bench/README.md, session 33): a literal whose
/// escapes are all the ones serde_json writes is copied as it is, byte for byte
/// what serde_json would write for its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonText<'a> {
    /// A string literal, quotes included, exactly as serde_json writes its value.
    Written(&'a str),
    /// The value of a literal written otherwise (`\/`, `\u00e9`, ...), or a text
    /// the writer made.
    Value(std::borrow::Cow<'a, str>),
}

impl<'a> JsonText<'a> {
    /// The text it stands for.
    pub fn value(&self) -> std::borrow::Cow<'a, str> {
        match self {
            // Only a walk makes a `Written`, of a literal it checked; were it not one,
            // its inside as written is the nearest answer (no panic on a request).
            JsonText::Written(literal) => {
                let inside = literal
                    .get(1..literal.len().saturating_sub(1))
                    .unwrap_or("");
                if !inside.contains('\\') {
                    return std::borrow::Cow::Borrowed(inside);
                }
                unescape_canonical(inside)
                    .or_else(|| string_value(literal).map(std::borrow::Cow::into_owned))
                    .map_or(std::borrow::Cow::Borrowed(inside), std::borrow::Cow::Owned)
            }
            JsonText::Value(value) => value.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            JsonText::Written(literal) => literal.len() == 2,
            JsonText::Value(value) => value.is_empty(),
        }
    }

    /// Whether it is empty or only whitespace (`str::trim`'s). Most texts start with
    /// a printable ASCII character and are answered without decoding.
    pub fn is_blank(&self) -> bool {
        match self {
            JsonText::Written(literal) => match literal.as_bytes()[1] {
                b'"' => true,
                byte if byte > b' ' && byte < 0x7f && byte != b'\\' => false,
                _ => self.value().trim().is_empty(),
            },
            JsonText::Value(value) => value.trim().is_empty(),
        }
    }

    /// Its trailing whitespace (`str::trim_end`'s) taken off.
    pub fn trim_end(&mut self) {
        let value = self.value();
        let trimmed = value.trim_end();
        if trimmed.len() != value.len() {
            *self = JsonText::Value(match value {
                std::borrow::Cow::Borrowed(value) => std::borrow::Cow::Borrowed(value.trim_end()),
                std::borrow::Cow::Owned(value) => {
                    std::borrow::Cow::Owned(value.trim_end().to_owned())
                }
            });
        }
    }

    /// Writes it to `out` as a JSON string, as serde_json writes its value.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            JsonText::Written(literal) => out.extend_from_slice(literal.as_bytes()),
            JsonText::Value(value) => write_json_str(out, value),
        }
    }
}

/// The text a literal's `inside` stands for when its escapes are the ones serde_json
/// writes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00xx` in lowercase
/// for the other control characters; see [`Walk::text`]): a tool's result (JSON in
/// a string, an escape every few bytes) decoded at a fraction of what serde_json's
/// string reader takes. Plain bytes are copied sixteen at a time, each block stored whole before
/// its first backslash is looked for (a byte loop, with a copy for each run between
/// escapes, took 12,000 instructions for an agent's 1.3 KB result: bench/README.md,
/// session 36). `None` for any other escape.
fn unescape_canonical(inside: &str) -> Option<String> {
    let bytes = inside.as_bytes();
    // The text is never longer than its literal: each escape stands for one byte.
    let mut out = vec![0u8; bytes.len()];
    let (mut read, mut written) = (0, 0);
    loop {
        // `written <= read`, so a block read whole is stored whole inside `out`.
        #[cfg(target_arch = "x86_64")]
        while let Some(block) = bytes.get(read..read + 16) {
            out[written..written + 16].copy_from_slice(block);
            // Inside a checked literal every stop is a backslash (quotes are escaped,
            // control characters are not allowed).
            let stops = string_stops_16(block);
            if stops != 0 {
                let plain = stops.trailing_zeros() as usize;
                read += plain;
                written += plain;
                break;
            }
            read += 16;
            written += 16;
        }
        let Some(&byte) = bytes.get(read) else {
            break;
        };
        let (byte, length) = if byte != b'\\' {
            (byte, 1)
        } else {
            match bytes.get(read + 1)? {
                b'"' => (b'"', 2),
                b'\\' => (b'\\', 2),
                b'b' => (0x08, 2),
                b'f' => (0x0c, 2),
                b'n' => (b'\n', 2),
                b'r' => (b'\r', 2),
                b't' => (b'\t', 2),
                b'u' => match bytes.get(read + 2..read + 6)? {
                    &[b'0', b'0', high @ (b'0' | b'1'), low] => {
                        let low = (low as char).to_digit(16)? as u8;
                        ((high - b'0') * 16 + low, 6)
                    }
                    _ => return None,
                },
                _ => return None,
            }
        };
        out[written] = byte;
        written += 1;
        read += length;
    }
    out.truncate(written);
    // SAFETY: `inside` is UTF-8; its bytes are copied in order, except that each
    // escape (ASCII) becomes one ASCII character, which keeps the text UTF-8.
    Some(unsafe { String::from_utf8_unchecked(out) })
}

/// `text` (a JSON value, whitespace around it allowed) written to `out` compactly,
/// as serde_json writes the `Value` it reads from it, without building that value:
/// a tool's result that is JSON is sent to Gemini as JSON (`google::raw_request`),
/// and reading it into a tree took 40 instructions a byte. `None`, with `out` as
/// it was, for what is not JSON and for what this writer leaves to serde_json: a
/// number other than an unsigned integer (serde writes floats its own way), a key
/// with an escape or given twice (serde keeps the last value in the first one's
/// place), an object of more than 64 members, nesting past the walk's depth.
pub fn write_compact(text: &str, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    let mut walk = Walk::new(text);
    let written = compact_value(&mut walk, out, &mut Vec::new()).and_then(|()| walk.done());
    if written.is_none() {
        out.truncate(start);
    }
    written
}

/// [`write_compact`] of the value at the walk; `keys` is a stack of the keys of
/// the objects being written.
fn compact_value<'a>(
    walk: &mut Walk<'a>,
    out: &mut Vec<u8>,
    keys: &mut Vec<&'a str>,
) -> Option<()> {
    if walk.at_string() {
        walk.text()?.write(out);
    } else if walk.at_object() {
        let base = keys.len();
        out.push(b'{');
        walk.object(|walk, key| {
            let members = &keys[base..];
            if has_escape(key) || members.len() >= 64 || members.contains(&key) {
                return None;
            }
            if !members.is_empty() {
                out.push(b',');
            }
            keys.push(key);
            // A key without escapes is written by serde as it is.
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            compact_value(walk, out, keys)
        })?;
        keys.truncate(base);
        out.push(b'}');
    } else if walk.at_array() {
        out.push(b'[');
        let mut first = true;
        walk.array(|walk| {
            if !first {
                out.push(b',');
            }
            first = false;
            compact_value(walk, out, keys)
        })?;
        out.push(b']');
    } else {
        let scalar = walk.skip()?;
        let kept = matches!(scalar, "true" | "false" | "null")
            || (scalar.len() < 20
                && scalar.bytes().all(|b| b.is_ascii_digit())
                && (scalar.len() == 1 || !scalar.starts_with('0')));
        kept.then_some(())?;
        out.extend_from_slice(scalar.as_bytes());
    }
    Some(())
}

/// A walk through one JSON value, for readers that want a few members of a small
/// object without building it (`api::responses::stream`): each value is scanned
/// once, either skipped (and checked as [`scan_object`] checks values) or walked
/// into. Every method answers `None` when the text is not what it expects; the
/// walk is then over.
pub struct Walk<'a> {
    text: &'a str,
    scan: Scanner<'a>,
    /// Where the key of the member being taken starts (its quote).
    key_at: usize,
    /// The text was checked before (see [`Walk::checked`]): values are skipped
    /// without checking them again.
    checked: bool,
}

impl<'a> Walk<'a> {
    pub fn new(text: &'a str) -> Walk<'a> {
        let mut scan = Scanner::new(text.as_bytes());
        // Nothing is open yet: the first container walked into is level 1.
        scan.level = 0;
        scan.skip_whitespace();
        Walk {
            text,
            scan,
            key_at: 0,
            checked: false,
        }
    }

    /// A walk through a text that was checked as JSON before, all of it (a
    /// `RawBody`'s, which its door's reader walked, or a part of one): what it walks
    /// into is read as [`Walk::new`]'s walk reads it, but what it skips is only
    /// measured, by its brackets and its strings' quotes, not checked a second time
    /// (an agent's tool schemas are most of its request; bench/README.md, session
    /// 33). On a text that was not checked, a skip ends at some place in the text or
    /// answers `None`.
    pub fn checked(text: &'a str) -> Walk<'a> {
        Walk {
            checked: true,
            ..Walk::new(text)
        }
    }

    /// Where the key of the member being taken starts (in [`Walk::object`]'s `each`).
    pub fn key_at(&self) -> usize {
        self.key_at
    }

    /// Where the walk is: the start of the value to take next.
    pub fn at(&self) -> usize {
        self.scan.at
    }

    /// The text from the walk on: the value to take next, and what follows it.
    pub fn rest(&self) -> &'a str {
        &self.text[self.scan.at..]
    }

    /// Takes the value at the walk that is known to be its next `len` bytes (a
    /// whole list or object an earlier walk of the same bytes took and checked,
    /// see `recent::Recent::get_prefix`), without walking it again.
    pub fn skip_known(&mut self, len: usize) -> Option<&'a str> {
        let start = self.scan.at;
        let text = self.text.get(start..start.checked_add(len)?)?;
        self.scan.at = start + len;
        self.scan.skip_whitespace();
        Some(text)
    }

    /// The text of the value taken since the walk was [`at`](Walk::at) `start`, as
    /// written (for a value walked into rather than skipped).
    pub fn text_since(&self, start: usize) -> &'a str {
        self.text[start..self.scan.at].trim_end_matches([' ', '\t', '\n', '\r'])
    }

    /// At an object: `each` gets each key as written between its quotes (escapes
    /// not decoded, so a key with a backslash is for the caller to refuse) and must
    /// take its value (`skip`, `string`, `object` or `array`) before answering.
    pub fn object(
        &mut self,
        mut each: impl FnMut(&mut Walk<'a>, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.open(b'{', b'}', |walk| walk.member(&mut each))
    }

    /// The rest of the top-level object from its member at `at`, a text that starts
    /// with the same bytes as one walked before up to `at`, whose walk went past
    /// them: what that walk did with them, it would do again (the caller keeps what
    /// it took from them). `at` must not be the first member's: the object might
    /// now be `{}`.
    pub fn object_from(
        &mut self,
        at: usize,
        mut each: impl FnMut(&mut Walk<'a>, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.scan.at = at;
        self.scan.level = 1;
        // The earlier text may have had less whitespace before the key.
        self.scan.skip_whitespace();
        self.items(b'}', |walk| walk.member(&mut each))?;
        self.scan.level = 0;
        Some(())
    }

    /// One member of an object: its key, then `each` takes its value.
    fn member(
        &mut self,
        each: &mut impl FnMut(&mut Walk<'a>, &'a str) -> Option<()>,
    ) -> Option<()> {
        if self.scan.peek()? != b'"' {
            return None;
        }
        let key_start = self.scan.at;
        self.key_at = key_start;
        self.scan.string()?;
        let key = &self.text[key_start + 1..self.scan.at - 1];
        self.scan.colon()?;
        let before = self.scan.at;
        each(self, key)?;
        // A value must have been taken.
        (self.scan.at > before).then_some(())
    }

    /// At an array: `each` must take each element.
    pub fn array(&mut self, mut each: impl FnMut(&mut Walk<'a>) -> Option<()>) -> Option<()> {
        self.open(b'[', b']', |walk| {
            let before = walk.scan.at;
            each(walk)?;
            (walk.scan.at > before).then_some(())
        })
    }

    fn open(
        &mut self,
        opening: u8,
        closing: u8,
        item: impl FnMut(&mut Walk<'a>) -> Option<()>,
    ) -> Option<()> {
        if self.scan.peek()? != opening || self.scan.level >= MAX_DEPTH {
            return None;
        }
        self.scan.at += 1;
        self.scan.level += 1;
        self.scan.skip_whitespace();
        if self.scan.peek()? == closing {
            self.scan.at += 1;
            self.scan.skip_whitespace();
        } else {
            self.items(closing, item)?;
        }
        self.scan.level -= 1;
        Some(())
    }

    /// The items of a container from one that starts here, to its `closing` bracket.
    fn items(
        &mut self,
        closing: u8,
        mut item: impl FnMut(&mut Walk<'a>) -> Option<()>,
    ) -> Option<()> {
        loop {
            item(self)?;
            self.scan.skip_whitespace();
            match self.scan.peek()? {
                b',' => {
                    self.scan.at += 1;
                    self.scan.skip_whitespace();
                }
                byte if byte == closing => {
                    self.scan.at += 1;
                    break;
                }
                _ => return None,
            }
        }
        self.scan.skip_whitespace();
        Some(())
    }

    /// Takes one value, checked; its text.
    pub fn skip(&mut self) -> Option<&'a str> {
        let start = self.scan.at;
        if self.checked {
            self.scan.at = past_checked_value(self.scan.text, start)?;
        } else {
            self.scan.value()?;
        }
        let text = &self.text[start..self.scan.at];
        self.scan.skip_whitespace();
        Some(text)
    }

    /// Takes a `null` if that is what comes: whether it was one.
    pub fn null(&mut self) -> bool {
        let is_null = self.text.as_bytes()[self.scan.at..].starts_with(b"null");
        if is_null {
            self.scan.at += 4;
            self.scan.skip_whitespace();
        }
        is_null
    }

    /// Takes `null`, or a number as serde reads a `u64`: digits only (a checked
    /// JSON number that `str::parse` takes has no sign, fraction or exponent), in
    /// range. `None` for anything else.
    pub fn u64_or_null(&mut self) -> Option<Option<u64>> {
        if self.null() {
            return Some(None);
        }
        self.skip()?.parse().ok().map(Some)
    }

    /// Takes `null`, `true` or `false` (as serde reads an `Option<bool>`). `None`
    /// for anything else.
    pub fn bool_or_null(&mut self) -> Option<Option<bool>> {
        match self.skip()? {
            "null" => Some(None),
            "true" => Some(Some(true)),
            "false" => Some(Some(false)),
            _ => None,
        }
    }

    /// Whether a string comes next.
    pub fn at_string(&self) -> bool {
        self.scan.peek() == Some(b'"')
    }

    /// Whether an object comes next.
    pub fn at_object(&self) -> bool {
        self.scan.peek() == Some(b'{')
    }

    /// Whether an array comes next.
    pub fn at_array(&self) -> bool {
        self.scan.peek() == Some(b'[')
    }

    /// Takes a string: the text it stands for (see [`string_value`]). The scan
    /// says whether it has escapes, so a plain one is not searched again.
    pub fn string(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        if !self.at_string() {
            return None;
        }
        let start = self.scan.at;
        let escaped = self.scan.string()?;
        let raw = &self.text[start..self.scan.at];
        self.scan.skip_whitespace();
        if escaped {
            serde_json::from_str::<String>(raw)
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            Some(std::borrow::Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// Takes a string as a writer that copies it out again wants it: the literal as
    /// written when that is how serde_json writes its value (see [`JsonText`]), so
    /// that it is not decoded here and escaped again there.
    pub fn text(&mut self) -> Option<JsonText<'a>> {
        if !self.at_string() {
            return None;
        }
        let start = self.scan.at;
        let (escaped, other_escapes) = self.scan.string_noting::<true>()?;
        let literal = &self.text[start..self.scan.at];
        self.scan.skip_whitespace();
        if !escaped || !other_escapes {
            Some(JsonText::Written(literal))
        } else {
            serde_json::from_str::<String>(literal)
                .ok()
                .map(|value| JsonText::Value(std::borrow::Cow::Owned(value)))
        }
    }

    /// The walk took the whole text (whitespace aside).
    pub fn done(&self) -> Option<()> {
        (self.scan.at == self.text.len()).then_some(())
    }
}

/// `bytes` as text when they are UTF-8: the check every chunk and body passes
/// before it is scanned, with SIMD (simdutf8, AVX2 or SSE4.2 where the processor
/// has them): about a third of the instructions of `std::str::from_utf8` on a
/// streamed chunk.
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}

/// The differential test of a reader that keeps a [`StringMemo`] to read an event
/// that is the last one but for one string. Each template has `@` where that string's
/// characters go. For each: the template filled with `Hello` is read first (and a
/// plain text in its place must then be compared, unless the template has an
/// escape, `\\u`, that keeps its event from being kept); then every follower (each
/// template filled with each sample, the shared ones and `closers`, texts that end
/// the string and go on in the event's own grammar, and every cut and one-byte edit
/// of the first event) is read after it, and after each follower every filling of
/// the template. Every reading must be what a fresh walk reads. `read` reads with
/// the reader, `walked` without one, both as `Debug` text (readings borrow the text
/// they read); `kept` tells whether the reader would compare a text with the event
/// it keeps. Returns how many followers were compared.
#[cfg(test)]
pub fn check_string_memo_reader<R: Clone + Default>(
    templates: &[&str],
    closers: &[&str],
    read: impl Fn(&mut R, &bytes::Bytes) -> String,
    walked: impl Fn(&bytes::Bytes) -> String,
    kept: impl Fn(&R, &bytes::Bytes) -> bool,
) -> usize {
    const SAMPLES: [&str; 9] = [
        "Hello",
        "",
        "a",
        " a longer piece of text, longer than the last",
        "é😀",
        r#"say \"hi\""#,
        r#"\n"#,
        "\u{1}",
        "x\ty",
    ];
    let fill = |template: &str, text: &str| bytes::Bytes::from(template.replace('@', text));
    let samples: Vec<&str> = SAMPLES.iter().chain(closers).copied().collect();
    let mut compared = 0;
    for template in templates {
        let first = fill(template, "Hello");
        let mut reader = R::default();
        assert_eq!(read(&mut reader, &first), walked(&first), "{template}");
        let plain = fill(template, "plain text");
        assert_eq!(
            kept(&reader, &plain),
            !template.contains("\\u"),
            "{template}"
        );
        let mut followers: Vec<bytes::Bytes> = samples
            .iter()
            .flat_map(|sample| templates.iter().map(|t| fill(t, sample)))
            .collect();
        let first_text = std::str::from_utf8(&first).expect("UTF-8");
        let edits = cut_and_edited(&[first_text], b"\"\\{1 x");
        followers.extend(edits.into_iter().map(bytes::Bytes::from));
        for text in followers {
            compared += usize::from(kept(&reader, &text));
            let mut after = reader.clone();
            assert_eq!(
                read(&mut after, &text),
                walked(&text),
                "{template} then {text:?}"
            );
            for sample in &samples {
                let next = fill(template, sample);
                let reading = read(&mut after.clone(), &next);
                assert_eq!(reading, walked(&next), "{text:?} then {next:?}");
            }
        }
    }
    compared
}

/// Texts for the differential tests of the readers built on [`Walk`]: each sample,
/// every truncation of it, and every one-byte deletion and replacement by each of
/// `edits` (those that are still UTF-8).
#[cfg(test)]
pub fn cut_and_edited(samples: &[&str], edits: &[u8]) -> Vec<String> {
    let mut texts = Vec::new();
    for sample in samples {
        texts.push((*sample).to_owned());
        for cut in 0..sample.len() {
            texts.extend(sample.get(..cut).map(str::to_owned));
        }
        let bytes = sample.as_bytes();
        for at in 0..bytes.len() {
            let mut deleted = bytes.to_vec();
            deleted.remove(at);
            texts.extend(String::from_utf8(deleted).ok());
            for &byte in edits {
                let mut edited = bytes.to_vec();
                edited[at] = byte;
                texts.extend(String::from_utf8(edited).ok());
            }
        }
    }
    texts
}

/// For walks that read a struct's members: a member seen for the first time (serde
/// refuses a member given twice), `None` the second time.
pub fn first_time(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// [`first_time`] for a member whose value the walk keeps: `slot` takes what
/// `value` reads (nothing is read the second time: `None`), and a value `value`
/// refuses (`None`) refuses the walk.
pub fn first_value<T>(slot: &mut Option<T>, value: impl FnOnce() -> Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value()?);
    Some(())
}

/// Whether a key (or other short text) holds a backslash, i.e. an escape: a plain
/// loop, which for the few bytes of a key costs a fraction of `str::contains`'s
/// searcher (that was 50 instructions a key, a tenth of reading a chunk).
#[inline]
pub fn has_escape(key: &str) -> bool {
    key.bytes().any(|b| b == b'\\')
}

/// For the same walks: a key the struct does not know, so the walk gives way
/// (`None`). `refused` is set when serde's typed parse of a struct that denies
/// unknown fields refuses it too (a key without escapes, which might spell a
/// known one), so that the caller need not ask serde.
pub fn refuse_unknown(key: &str, refused: &mut bool) -> Option<()> {
    if !has_escape(key) {
        *refused = true;
    }
    None
}

/// A position in text that is already known to be UTF-8, so only the ASCII structure
/// is checked here.
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
    /// A string seen so far held a backslash escape.
    escapes: bool,
    /// The nesting level of the container that holds the value scanned next (1: a
    /// member of the top-level object), so that a value skipped deep inside a
    /// [`Walk`] is held to serde_json's depth limit counted from the top.
    level: u32,
}

/// Bit `n` is set when byte `n` of `chunk` (16 bytes or more) ends the run of plain
/// string bytes: a quote, a backslash or a control character. SSE2, which every
/// x86_64 processor has: a third of the instructions of eight bytes at a time, and
/// long strings (base64 embeddings, a long prompt) are most of a large text.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn string_stops_16(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    assert!(chunk.len() >= 16);
    // SAFETY: SSE2 is in the x86_64 baseline (no detection needed); the load is
    // unaligned and reads the first 16 bytes of `chunk`, checked just above.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Unsigned `byte <= 0x1f` as `min(byte, 0x1f) == byte`.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1f)), bytes);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// Bit `n` is set when byte `n` of `chunk` (16 bytes or more) is a bracket or a
/// quote: what [`past_checked_value`] looks for. `[` and `{` differ only in bit 5,
/// as `]` and `}` do, so each pair is one comparison with that bit set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn structure_stops_16(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(chunk.len() >= 16);
    // SAFETY: as in `string_stops_16`: SSE2 is baseline, the load is unaligned and
    // within `chunk`.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
        let open = _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8));
        let close = _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8));
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(open, close), quote)) as u32
    }
}

/// Bit `n` is set when byte `n` of `chunk` (16 bytes or more) is a quote or a
/// backslash.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quote_or_backslash_16(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(chunk.len() >= 16);
    // SAFETY: as in `string_stops_16`.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(quote, backslash)) as u32
    }
}

/// The index of the first bracket or quote at or after `i`.
#[inline(always)]
fn next_bracket_or_quote(text: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = text.get(i..i + 16) {
        let stops = structure_stops_16(chunk);
        if stops != 0 {
            return Some(i + stops.trailing_zeros() as usize);
        }
        i += 16;
    }
    text.get(i..)?
        .iter()
        .position(|&b| matches!(b, b'"' | b'[' | b']' | b'{' | b'}'))
        .map(|found| i + found)
}

/// Past the string whose opening quote is before `i`, in a checked text: the index
/// after its closing quote.
#[inline(always)]
fn past_checked_string(text: &[u8], mut i: usize) -> Option<usize> {
    loop {
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = text.get(i..i + 16) {
            let stops = quote_or_backslash_16(chunk);
            if stops != 0 {
                i += stops.trailing_zeros() as usize;
                break;
            }
            i += 16;
        }
        match *text.get(i)? {
            b'"' => return Some(i + 1),
            // An escape: the byte after the backslash is not the string's end.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Past the value at `start` of a text that was checked before (a
/// [`Walk::checked`]'s): the index after it. Only a container's brackets and its
/// strings' quotes and backslashes are looked at; a number or literal ends at the
/// first byte that cannot be in one.
fn past_checked_value(text: &[u8], start: usize) -> Option<usize> {
    match *text.get(start)? {
        b'"' => past_checked_string(text, start + 1),
        b'{' | b'[' => past_checked_container(text, start),
        _ => Some(
            start
                + text[start..]
                    .iter()
                    .position(|&b| matches!(b, b',' | b']' | b'}') || b <= b' ')
                    .unwrap_or(text.len() - start),
        ),
    }
}

/// Past the container whose opening bracket is at `start`, in a checked text: the
/// index after its closing bracket. 64 bytes at a time where they hold no
/// backslash: the quotes say which bytes are inside strings (each quote opens or
/// closes one, so a running XOR of the quote bits marks them), the brackets outside
/// them are counted, and only a block where the count may come back to zero is
/// looked at bracket by bracket. A tool's schema, short strings and brackets, is a
/// quote every few bytes: one at a time that was some 30 instructions each.
/// Blocks with an escape, and the text's last bytes, are taken stop by stop.
fn past_checked_container(text: &[u8], start: usize) -> Option<usize> {
    // Past the opening bracket: one container open, outside any string.
    let (mut depth, mut i, mut in_string) = (1usize, start + 1, false);
    loop {
        #[cfg(target_arch = "x86_64")]
        if let Some(block) = text.get(i..i + 64) {
            let [quotes, backslashes, opens, closes] = structure_64(block);
            if backslashes == 0 {
                let mut inside = running_xor(quotes);
                if in_string {
                    inside = !inside;
                }
                in_string = inside >> 63 == 1;
                let (opens, closes) = (opens & !inside, closes & !inside);
                if (closes.count_ones() as usize) >= depth {
                    // The container may end here.
                    let mut brackets = opens | closes;
                    while brackets != 0 {
                        let at = brackets.trailing_zeros();
                        brackets &= brackets - 1;
                        if opens >> at & 1 == 1 {
                            depth += 1;
                        } else {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + at as usize + 1);
                            }
                        }
                    }
                } else {
                    depth = depth + opens.count_ones() as usize - closes.count_ones() as usize;
                }
                i += 64;
                continue;
            }
        }
        if in_string {
            i = past_checked_string(text, i)?;
            in_string = false;
        }
        // Stop by stop to past this block (always outside a string between stops),
        // then blocks again.
        let end = i + 64;
        while i < end {
            i = next_bracket_or_quote(text, i)?;
            match text[i] {
                b'"' => i = past_checked_string(text, i + 1)?,
                b'{' | b'[' => {
                    depth += 1;
                    i += 1;
                }
                _ => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
            }
        }
    }
}

/// The quotes, backslashes, opening and closing brackets of the 64 bytes of
/// `block`, a bit per byte each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn structure_64(block: &[u8]) -> [u64; 4] {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(block.len() >= 64);
    let mut masks = [0u64; 4];
    for part in 0..4 {
        // SAFETY: as in `string_stops_16`: SSE2 is baseline, the load is unaligned
        // and within `block` (64 bytes, checked above).
        let found = unsafe {
            let bytes = _mm_loadu_si128(block.as_ptr().add(16 * part).cast());
            // `[` and `{` differ only in bit 5, as `]` and `}` do.
            let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
            [
                _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8)),
                _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8)),
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
            ]
            .map(|mask| _mm_movemask_epi8(mask) as u16)
        };
        for (mask, bits) in masks.iter_mut().zip(found) {
            *mask |= u64::from(bits) << (16 * part);
        }
    }
    masks
}

/// Bit `n` of the answer is the XOR of bits `0..=n` of `bits`: with quote bits, set
/// from each opening quote up to (not including) its closing one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn running_xor(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

/// The index of the first byte at or after `i` that is not an ASCII digit
/// (`text.len()` when there is none). Eight bytes at a time: the digits of a
/// number were a byte-at-a-time loop, most of the check of an answer made of
/// numbers (an embedding is 1,536 of them, ten digits each).
#[inline(always)]
fn past_digits(text: &[u8], mut i: usize) -> usize {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    while let Some(word) = text.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        // A byte is a digit (0x30..=0x39) when its high nibble is 3 and still is
        // with 6 added. Adding may carry into the next byte only from a byte above
        // 0xF9, a non-digit: the lowest flagged byte is exact.
        let not_digits =
            ((word & HIGH_NIBBLES) ^ THREES) | ((word.wrapping_add(SIXES) & HIGH_NIBBLES) ^ THREES);
        if not_digits != 0 {
            return i + (not_digits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(b'0'..=b'9') = text.get(i) {
        i += 1;
    }
    i
}

/// Whether `bytes` can be written between quotes as a JSON string as they are:
/// no quote, backslash or control character (the only bytes serde_json escapes).
pub fn needs_no_escaping(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    #[cfg(target_arch = "x86_64")]
    while rest.len() >= 16 {
        if string_stops_16(rest) != 0 {
            return false;
        }
        rest = &rest[16..];
    }
    rest.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `text` as a JSON string, exactly as serde_json writes it; the usual string,
/// with nothing to escape, is copied as it is instead of byte by byte.
pub fn write_json_str(out: &mut Vec<u8>, text: &str) {
    if needs_no_escaping(text.as_bytes()) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        serde_json::to_writer(out, text).expect("a string always serializes");
    }
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        Scanner {
            text,
            at: 0,
            escapes: false,
            level: 1,
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    #[inline(always)]
    fn skip_whitespace(&mut self) {
        // Most calls find none: one comparison for them (whitespace is below `!`).
        while let Some(&byte) = self.text.get(self.at) {
            if byte > b' ' || !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.at += 1;
        }
    }

    /// At a `"`: moves past the string. `Some(true)` when it contains escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        self.string_noting::<false>().map(|(escaped, _)| escaped)
    }

    /// [`Scanner::string`], and with `NOTE_OTHER` whether the string holds an escape
    /// that serde_json does not write (`\/`, or a `\u` escape of a character it
    /// writes otherwise): what [`Walk::text`] asks, found in the same pass (for it
    /// alone: the check's code, inlined wherever a string is scanned, changed how
    /// the rest of those functions was compiled, about 1,000 instructions a stream
    /// on the Messages door's).
    #[inline(always)]
    fn string_noting<const NOTE_OTHER: bool>(&mut self) -> Option<(bool, bool)> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let text = self.text;
        let mut i = self.at + 1;
        let (mut escaped, mut other_escapes) = (false, false);
        loop {
            // Past the plain bytes, to the next quote, backslash or control character.
            'plain: {
                #[cfg(target_arch = "x86_64")]
                while let Some(chunk) = text.get(i..i + 16) {
                    let stops = string_stops_16(chunk);
                    if stops != 0 {
                        i += stops.trailing_zeros() as usize;
                        break 'plain;
                    }
                    i += 16;
                }
                // Eight bytes at a time (the lowest flagged byte is exact; higher flags
                // may be false): the last bytes of the text, and other architectures.
                while let Some(word) = text.get(i..i + 8) {
                    let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                    let quote = word ^ (ONES * u64::from(b'"'));
                    let backslash = word ^ (ONES * u64::from(b'\\'));
                    let flags = ((quote.wrapping_sub(ONES) & !quote)
                        | (backslash.wrapping_sub(ONES) & !backslash)
                        | (word.wrapping_sub(ONES * 0x20) & !word))
                        & HIGH;
                    if flags != 0 {
                        i += (flags.trailing_zeros() / 8) as usize;
                        break;
                    }
                    i += 8;
                }
            }
            match *text.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some((escaped, other_escapes));
                }
                b'\\' => {
                    escaped = true;
                    self.escapes = true;
                    match *text.get(i + 1)? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'/' => {
                            if NOTE_OTHER {
                                other_escapes = true;
                            }
                            i += 2;
                        }
                        b'u' => {
                            let unit = hex4(text, i + 2)?;
                            // serde_json writes `\u00xx`, lowercase, for the control
                            // characters without a short escape, and nothing else.
                            if NOTE_OTHER
                                && (unit >= 0x20
                                    || matches!(unit, 0x08..=0x0a | 0x0c | 0x0d)
                                    || text[i + 5].is_ascii_uppercase())
                            {
                                other_escapes = true;
                            }
                            i += 6;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by a low one.
                                if text.get(i..i + 2)? != b"\\u" {
                                    return None;
                                }
                                if !(0xDC00..0xE000).contains(&hex4(text, i + 2)?) {
                                    return None;
                                }
                                i += 6;
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
    }

    /// A number, rejecting what serde_json would not fit in an `f64`.
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        let text = self.text;
        let start = self.at;
        let mut i = start;
        if text.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits_start = i;
        match *text.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = past_digits(text, i + 1),
            _ => return None,
        }
        let int_digits = i - digits_start;
        // Only very long or large-exponent numbers can overflow; those are parsed.
        let mut check_range = int_digits > 300;
        if text.get(i) == Some(&b'.') {
            i += 1;
            if !text.get(i)?.is_ascii_digit() {
                return None;
            }
            i = past_digits(text, i + 1);
        }
        if let Some(b'e' | b'E') = text.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = text.get(i) {
                i += 1;
            }
            let exponent_start = i;
            if !text.get(i)?.is_ascii_digit() {
                return None;
            }
            i = past_digits(text, i + 1);
            if i - exponent_start > 2 || int_digits > 200 {
                check_range = true;
            }
        }
        self.at = i;
        if check_range {
            let number = std::str::from_utf8(&text[start..i]).ok()?;
            if !number.parse::<f64>().ok()?.is_finite() {
                return None;
            }
        }
        Some(())
    }

    /// After a number in a list: the numbers that follow it, each after its comma,
    /// taken here rather than one at a time through `container`'s loop (an
    /// embedding is 1,536 of them; that loop's dispatch and bookkeeping were half
    /// of each one's cost). Stops at the comma before anything that is not a
    /// number, and after the last number, for `container` to go on from there.
    fn more_numbers(&mut self) -> Option<()> {
        loop {
            self.skip_whitespace();
            let comma = self.at;
            if self.text.get(comma) != Some(&b',') {
                return Some(());
            }
            self.at += 1;
            self.skip_whitespace();
            if !matches!(self.text.get(self.at), Some(b'-' | b'0'..=b'9')) {
                self.at = comma;
                return Some(());
            }
            self.number()?;
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.text.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// At the start of a text that must be an object: past its `{` and the
    /// whitespace after it; `Some(true)` when the object is empty (then past its `}`
    /// too). `None` when the text does not start as an object.
    #[inline(always)]
    fn open_object(&mut self) -> Option<bool> {
        self.skip_whitespace();
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(true);
        }
        Some(false)
    }

    /// At an object's key: past the key, the colon and the whitespace after it.
    #[inline(always)]
    fn key_and_colon(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.colon()
    }

    /// After a key: past the whitespace, the colon and the whitespace after it.
    #[inline(always)]
    fn colon(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek()? != b':' {
            return None;
        }
        self.at += 1;
        self.skip_whitespace();
        Some(())
    }

    /// At the `{` of a top-level member's object: past the object, checked as
    /// [`Scanner::value`] checks it, with the token counts among its members (the
    /// last of a repeated key, as in a `Value`).
    fn token_counts(&mut self) -> Option<TokenCounts> {
        let mut counts = TokenCounts::default();
        self.at += 1;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(counts);
        }
        // Its members' values are one level down (for the nesting bound).
        let holder = self.level;
        self.level = holder + 1;
        loop {
            let key = self.key()?;
            self.colon()?;
            let value_start = self.at;
            self.value()?;
            match &*key {
                b"prompt_tokens" => counts.prompt = self.unsigned(value_start),
                b"completion_tokens" => counts.completion = self.unsigned(value_start),
                b"prompt_tokens_details" => {
                    counts.cached = self.detail(value_start, b"cached_tokens")?;
                }
                b"completion_tokens_details" => {
                    counts.reasoning = self.detail(value_start, b"reasoning_tokens")?;
                }
                _ => {}
            }
            if self.member_ends_object()? {
                self.level = holder;
                return Some(counts);
            }
        }
    }

    /// After an object member's value: past the comma and the whitespace after it
    /// (`false`), or past the closing brace (`true`); `None` for anything else.
    #[inline(always)]
    fn member_ends_object(&mut self) -> Option<bool> {
        self.skip_whitespace();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.skip_whitespace();
                Some(false)
            }
            b'}' => {
                self.at += 1;
                Some(true)
            }
            _ => None,
        }
    }

    /// The member `name` of the value from `start` to here (already checked) when
    /// that value is an object, as `Value::as_u64` reads it; `Some(None)` when it is
    /// absent or not such a number. Used for the two `*_details` objects of a
    /// `usage`, so it is not on the path of chunks without usage.
    fn detail(&self, start: usize, name: &[u8]) -> Option<Option<u64>> {
        if self.text.get(start) != Some(&b'{') {
            return Some(None);
        }
        let mut scan = Scanner {
            text: &self.text[..self.at],
            at: start + 1,
            escapes: false,
            level: 2,
        };
        let mut found = None;
        scan.skip_whitespace();
        if scan.peek()? == b'}' {
            return Some(None);
        }
        loop {
            let key = scan.key()?;
            scan.colon()?;
            let value_start = scan.at;
            scan.value()?;
            if *key == *name {
                // The last of a repeated key, as in a `Value`.
                found = scan.unsigned(value_start);
            }
            if scan.member_ends_object()? {
                return Some(found);
            }
        }
    }

    /// At an object member's key: past it, with its bytes (escapes decoded, which
    /// is rare: serde_json decodes them).
    fn key(&mut self) -> Option<std::borrow::Cow<'a, [u8]>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at;
        let escaped = self.string()?;
        let key = &self.text[start..self.at];
        Some(if escaped {
            let decoded: String = serde_json::from_slice(key).ok()?;
            decoded.into_bytes().into()
        } else {
            key[1..key.len() - 1].into()
        })
    }

    /// The checked value from `start` to here as `Value::as_u64` reads it: digits
    /// only (no sign, fraction or exponent; serde_json reads `-0` as a float) that
    /// fit a `u64`.
    fn unsigned(&self, start: usize) -> Option<u64> {
        let digits = &self.text[start..self.at];
        if digits.is_empty() {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// One value of a top-level member.
    fn value(&mut self) -> Option<()> {
        // Scalars directly: most members are, and the loop below has more to set up.
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => self.container(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// At a `{` or `[`: one whole container. Iterative: the open containers are bits
    /// of `open` (1 = object), so hostile nesting cannot exhaust the stack.
    fn container(&mut self) -> Option<()> {
        let mut open: u128 = 0;
        // The top-level object is level 1; this container is one below its holder.
        let holder = self.level;
        let mut depth: u32 = holder;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                opening @ (b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    let is_object = opening == b'{';
                    open = open << 1 | u128::from(is_object);
                    self.at += 1;
                    self.skip_whitespace();
                    // `{` + 2 is `}`, `[` + 2 is `]`: an empty container.
                    if self.peek()? == opening + 2 {
                        self.at += 1;
                        depth -= 1;
                        open >>= 1;
                    } else {
                        if is_object {
                            self.key_and_colon()?;
                        }
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => {
                    self.number()?;
                    if open & 1 == 0 {
                        self.more_numbers()?;
                    }
                }
            }
            // After a complete value: a comma and the next one, or closing brackets.
            loop {
                if depth == holder {
                    return Some(());
                }
                self.skip_whitespace();
                let next = self.peek()?;
                self.at += 1;
                let in_object = open & 1 == 1;
                match next {
                    b',' => {
                        self.skip_whitespace();
                        if in_object {
                            self.key_and_colon()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                depth -= 1;
                open >>= 1;
            }
        }
    }
}

fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    let mut unit = 0u32;
    for &digit in digits {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return None,
        };
        unit = unit << 4 | u32::from(value);
    }
    Some(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_memo_follows_one_plain_string() {
        let last = bytes::Bytes::from_static(br#"{"a":"x","b":{"c":"hello"},"d":1}"#);
        fn at(text: &[u8]) -> &str {
            std::str::from_utf8(text).unwrap()
        }
        let hello = &at(&last)[19..24];
        assert_eq!(hello, "hello");
        let mut memo = StringMemo::default();
        memo.remember(&last, hello);
        assert_eq!(memo.string_span(&last), Some(19..24));
        // Longer, shorter, emptied, changed at either end.
        assert_eq!(
            memo.string_span(br#"{"a":"x","b":{"c":"hello there"},"d":1}"#),
            Some(19..30)
        );
        assert_eq!(
            memo.string_span(br#"{"a":"x","b":{"c":"he"},"d":1}"#),
            Some(19..21)
        );
        assert_eq!(
            memo.string_span(br#"{"a":"x","b":{"c":""},"d":1}"#),
            Some(19..19)
        );
        assert_eq!(
            memo.string_span(br#"{"a":"x","b":{"c":"Jello!"},"d":1}"#),
            Some(19..25)
        );
        // A change outside it, or one that brings a quote, escape or control character.
        for other in [
            &br#"{"a":"y","b":{"c":"hello"},"d":1}"#[..],
            br#"{"a":"x","b":{"c":"hello"},"d":2}"#,
            br#"{"a":"x","b":{"c":"hel"lo"},"d":1}"#,
            br#"{"a":"x","b":{"c":"hel
lo"},"d":1}"#,
            b"{\"a\":\"x\",\"b\":{\"c\":\"hel\tlo\"},\"d\":1}",
            br#"{"a":"x","b":{"c":"hello"},"d":1} "#,
            br#"{"a":"x","b":{"c":"hello"#,
        ] {
            assert_eq!(
                memo.string_span(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // Only a string of the text, between its quotes and without escapes, is kept.
        let escaped = bytes::Bytes::from_static(
            br#"{"c":"a
b"}"#,
        );
        memo.remember(&escaped, &at(&escaped)[6..10]);
        assert_eq!(memo.string_span(&escaped), None);
        memo.remember(&last, &String::from("hello"));
        assert_eq!(memo.string_span(&last), None);
        memo.remember(&last, &at(&last)[18..24]);
        assert_eq!(memo.string_span(&last), None);
    }
    use serde::de::{IgnoredAny, MapAccess, Visitor};

    /// Every way a JSON text may write each ASCII character (and a few others),
    /// alone and among other escapes: `Walk::text` keeps the literal exactly when it
    /// is what serde_json writes for the value, and what it writes and stands for is
    /// always serde_json's.
    #[test]
    fn a_text_is_copied_only_when_serde_json_writes_it_so() {
        let mut forms: Vec<(char, String)> = Vec::new();
        for c in (0u8..0x80).map(char::from).chain(['é', '\u{2028}', '😀']) {
            if c >= ' ' && c != '"' && c != '\\' {
                forms.push((c, c.to_string()));
            }
            let short = match c {
                '"' => Some('"'),
                '\\' => Some('\\'),
                '/' => Some('/'),
                '\u{8}' => Some('b'),
                '\u{c}' => Some('f'),
                '\n' => Some('n'),
                '\r' => Some('r'),
                '\t' => Some('t'),
                _ => None,
            };
            if let Some(short) = short {
                forms.push((c, format!("\\{short}")));
            }
            let mut units = [0u16; 2];
            let units = c.encode_utf16(&mut units);
            let lower: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let upper: String = units.iter().map(|u| format!("\\u{u:04X}")).collect();
            forms.push((c, lower.clone()));
            if upper != lower {
                forms.push((c, upper));
            }
        }
        let mut copied = 0;
        for (c, form) in &forms {
            for (value, written) in [
                (format!("a{c}b"), format!("\"a{form}b\"")),
                (format!("{c}"), format!("\"{form}\"")),
                (
                    format!("x\"\n{c}\\\u{1f}"),
                    format!("\"x\\\"\\n{form}\\\\\\u001f\""),
                ),
            ] {
                let text = Walk::new(&written).text().expect("a string");
                let serde_writes = serde_json::to_string(&value).unwrap();
                assert_eq!(text.value(), value, "{written}");
                let mut out = Vec::new();
                text.write(&mut out);
                assert_eq!(String::from_utf8(out).unwrap(), serde_writes, "{written}");
                assert_eq!(
                    matches!(text, JsonText::Written(_)),
                    written == serde_writes,
                    "{written}"
                );
                copied += usize::from(written == serde_writes);
            }
        }
        assert!(copied > 3 * 100, "{copied}");
        assert_eq!(Walk::new("1").text(), None);
        assert_eq!(Walk::new(r#""\u00""#).text(), None);
    }

    /// Long texts whose escapes fall at every place of the sixteen-byte blocks that
    /// `unescape_canonical` copies (first, last, across two blocks, in the bytes
    /// after the last whole block), between plain ASCII and multi-byte characters,
    /// decode to what serde_json reads.
    #[test]
    fn long_texts_decode_wherever_their_escapes_fall() {
        let escapes = [r#"\""#, r"\\", r"\n", r"\t", r"\u001f", r"\u0000"];
        let fillers = ["a", "é", "😀"];
        let mut decoded = 0;
        for filler in fillers {
            for before in 0..40 {
                for escape in escapes {
                    for between in [0, 1, 15, 16, 17] {
                        let written = format!(
                            "\"{}{escape}{}{escape}{}\"",
                            "x".repeat(before),
                            filler.repeat(between),
                            "y".repeat(before % 7),
                        );
                        let value: String = serde_json::from_str(&written).unwrap();
                        let text = Walk::new(&written).text().expect("a string");
                        assert!(matches!(text, JsonText::Written(_)), "{written}");
                        assert_eq!(text.value(), value, "{written}");
                        decoded += 1;
                    }
                }
            }
        }
        assert_eq!(decoded, 3 * 40 * 6 * 5);
        // An escape serde_json does not write is left to serde_json.
        assert_eq!(unescape_canonical(&format!("{}\\/", "x".repeat(20))), None);
        assert_eq!(
            unescape_canonical(&format!("{}\\u00e9", "x".repeat(20))),
            None
        );
    }

    #[test]
    fn a_texts_blankness_and_trimmed_end_are_its_values() {
        for written in [
            r#""""#,
            r#"" ""#,
            r#""\n\t \r""#,
            r#""\u000b\f""#,
            "\"\u{3000}\u{2028}\"",
            r#""\u3000""#,
            r#""a""#,
            r#""\"""#,
            r#"" a ""#,
            r#""a \n""#,
            r#""a\u3000""#,
            "\"a\u{3000}\"",
            r#""\\""#,
            r#""é\n""#,
        ] {
            let value: String = serde_json::from_str(written).unwrap();
            let mut text = Walk::new(written).text().unwrap();
            assert_eq!(text.is_blank(), value.trim().is_empty(), "{written}");
            assert_eq!(text.is_empty(), value.is_empty(), "{written}");
            text.trim_end();
            assert_eq!(text.value(), value.trim_end(), "{written}");
            let mut out = Vec::new();
            text.write(&mut out);
            assert_eq!(
                out,
                serde_json::to_vec(value.trim_end()).unwrap(),
                "{written}"
            );
        }
    }

    /// Any JSON value a few levels deep, its strings full of what a skip must see
    /// past: quotes, backslashes, brackets, non-ASCII.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<i64>().prop_map(|n| serde_json::json!(n)),
            1 => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            // Mostly without escapes, which a checked skip takes 64 bytes at a time.
            6 => "[a-z \\[\\]{}:,\u{e9}\u{1F600}]{0,24}".prop_map(Value::String),
            2 => "[a-z \\\\\"\\[\\]{}:,\u{e9}\u{1F600}\n\u{1}]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z\"\\\\\\[{]{0,4}", inner), 0..6)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// What a walk skips of each member of an object (of each item, for a list).
    fn skipped(mut walk: Walk<'_>) -> Option<Vec<&str>> {
        let mut values = Vec::new();
        walk.object(|walk, _| {
            if walk.at_array() {
                walk.array(|walk| {
                    values.push(walk.skip()?);
                    Some(())
                })
            } else {
                values.push(walk.skip()?);
                Some(())
            }
        })?;
        walk.done()?;
        Some(values)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1000))]

        /// A checked walk skips each value of a valid text exactly as far as the
        /// checking walk does, written compactly or with spaces and newlines.
        #[test]
        fn a_checked_skip_ends_where_the_checking_skip_ends(
            values in proptest::collection::vec(any_json(), 1..5),
            pretty in proptest::bool::ANY,
        ) {
            let object: serde_json::Map<String, Value> = values
                .into_iter()
                .enumerate()
                .map(|(i, value)| (format!("k{i}"), value))
                .collect();
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let checking = skipped(Walk::new(&text));
            proptest::prop_assert!(checking.is_some(), "{}", text);
            proptest::prop_assert_eq!(skipped(Walk::checked(&text)), checking);
        }

        /// On a text that was not checked, a checked walk's skips end somewhere or
        /// answer `None`: no panic, no reading outside the text.
        #[test]
        fn a_checked_skip_of_a_bad_text_does_not_panic(
            text in "[ \"\\\\\\[\\]{}:,a1e.\\-tn\u{e9}]{0,40}",
        ) {
            let _ = skipped(Walk::checked(&format!("{{\"k\":{text}")));
            let _ = skipped(Walk::checked(&text));
        }
    }

    /// What serde_json writes of the `Value` it reads from `text`, if it reads one.
    fn serde_rewrites(text: &str) -> Option<Vec<u8>> {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|value| serde_json::to_vec(&value).unwrap())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// What `write_compact` writes is what serde_json writes of the value it
        /// reads, for JSON written compactly, with spaces, and with keys given
        /// twice; it writes nothing for what serde refuses.
        #[test]
        fn a_compact_text_is_what_serde_writes(
            value in any_json(),
            pretty in proptest::bool::ANY,
            twice in proptest::bool::ANY,
        ) {
            let mut text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            if twice && text.starts_with('{') && text.len() > 2 {
                text.insert_str(1, r#""a":1.0,"a":[2],"#);
            }
            let mut out = b"x".to_vec();
            if write_compact(&text, &mut out).is_some() {
                proptest::prop_assert_eq!(Some(out[1..].to_vec()), serde_rewrites(&text), "{}", text);
            } else {
                proptest::prop_assert_eq!(out, b"x".to_vec());
            }
        }

        /// And for texts that may not be JSON at all.
        #[test]
        fn a_compact_text_of_anything_is_what_serde_writes_or_nothing(
            text in "[ \"\\\\\\[\\]{}:,a1e.\\-tnrulf0\u{e9}]{0,24}",
        ) {
            let mut out = Vec::new();
            if write_compact(&text, &mut out).is_some() {
                proptest::prop_assert_eq!(Some(out), serde_rewrites(&text), "{}", text);
            }
        }
    }

    #[test]
    fn most_json_results_are_written_compact() {
        for (text, written) in [
            (
                r#" [{"name": "p 0", "email": "p0@example.com", "n": 12, "ok": true}, null] "#,
                Some(r#"[{"name":"p 0","email":"p0@example.com","n":12,"ok":true},null]"#),
            ),
            (
                r#"{"a": "\u00e9\/", "b": {}}"#,
                Some(r#"{"a":"é/","b":{}}"#),
            ),
            (r#"{"a": 1.5}"#, None),
            (r#"{"a": -1}"#, None),
            (r#"{"a": 1, "a": 2}"#, None),
            (r#"{"\u0061": 1}"#, None),
            ("[1] x", None),
            ("not json", None),
        ] {
            let mut out = Vec::new();
            let result = write_compact(text, &mut out).map(|()| String::from_utf8(out).unwrap());
            assert_eq!(result.as_deref(), written, "{text}");
            if let Some(written) = written {
                assert_eq!(serde_rewrites(text).unwrap(), written.as_bytes());
            }
        }
    }

    #[test]
    fn past_digits_stops_where_a_byte_loop_stops() {
        let byte_loop = |text: &[u8], start: usize| {
            start
                + text[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count()
        };
        // Every byte value at every place of a run of digits longer than a word,
        // from every start; and a second odd byte after it (a carry out of the
        // first, from 0xFA-0xFF, must not hide it or move the answer).
        for odd in 0..=u8::MAX {
            for second in [b'5', b'x', 0xFF, 0x2F, 0x3A] {
                for at in 0..20 {
                    let mut text = *b"01234567890123456789";
                    text[at] = odd;
                    if at + 1 < text.len() {
                        text[at + 1] = second;
                    }
                    for start in 0..text.len() {
                        for end in start..=text.len() {
                            assert_eq!(
                                past_digits(&text[..end], start),
                                byte_loop(&text[..end], start),
                                "{:?} from {start}",
                                &text[..end]
                            );
                        }
                    }
                }
            }
        }
    }

    /// What the scan must answer, worked out with serde_json: the text parses as a
    /// `Value`, is an object, and names none of the members twice.
    fn reference(text: &[u8]) -> Option<TopLevel> {
        let value: Value = serde_json::from_slice(text).ok()?;
        let map = value.as_object()?;
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(keys)
            }
        }
        let keys = serde::Deserializer::deserialize_map(
            &mut serde_json::Deserializer::from_slice(text),
            Keys,
        )
        .expect("valid as a Value");
        for known in [
            "id", "object", "created", "model", "choices", "usage", "error",
        ] {
            if keys.iter().filter(|key| *key == known).count() > 1 {
                return None;
            }
        }
        let present = |key: &str| map.get(key).is_some_and(|v| !v.is_null());
        Some(TopLevel {
            id: present("id"),
            object: present("object"),
            created: present("created"),
            model: present("model"),
            error: present("error"),
            choices: match map.get("choices") {
                None | Some(Value::Null) => Shape::Absent,
                Some(Value::Array(list)) => Shape::Expected(list.is_empty()),
                Some(_) => Shape::Other,
            },
            usage: match map.get("usage") {
                None | Some(Value::Null) => Shape::Absent,
                Some(usage @ Value::Object(_)) => Shape::Expected(TokenCounts::of(usage)),
                Some(_) => Shape::Other,
            },
            usage_member: None,
            // In valid JSON a backslash can only be an escape inside a string.
            escapes: text.contains(&b'\\'),
        })
    }

    fn agrees(text: &[u8]) {
        // Where `usage` lies is checked on its own (`the_usage_member_is_located`).
        let scanned = std::str::from_utf8(text)
            .ok()
            .and_then(scan_object)
            .map(|top| TopLevel {
                usage_member: None,
                ..top
            });
        assert_eq!(
            scanned,
            reference(text),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    /// Nesting as deep as serde_json takes and one level deeper, inside `usage`
    /// (read by its own loop) and inside another member: the same verdicts.
    #[test]
    fn nesting_at_the_bound_is_judged_as_serde_json_judges_it() {
        for member in ["usage", "other"] {
            for depth in 120..=130 {
                let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                agrees(format!(r#"{{"{member}":{{"x":{nested}}},"choices":[]}}"#).as_bytes());
                agrees(format!(r#"{{"{member}":{nested}}}"#).as_bytes());
            }
        }
    }

    const SAMPLES: &[&str] = &[
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"word7 "},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null,"annotations":[]},"finish_reason":"stop"}],"usage":{"prompt_tokens":25,"completion_tokens":20,"total_tokens":45,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default"}"#,
        r#"{"id":"c","object":"o","created":1,"model":"m","usage":null,"x":{"y":[1,{"z":"\u00e9\n"}],"w":-1.5e3},"choices":[{"delta":{}}]}"#,
        r#"{"id":"c","object":"o","created":1,"model":"m","choices":null,"error":{"message":"x"}}"#,
        " {\"id\" : \"c\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\", \"x\":[true,false,null,0,-0,1.5,1e5,2E-3,-0.0e+0,\"é😀\"] ,\"model\":\"m\"}\n",
        "{}",
        r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":-0,"x":{"prompt_tokens":1},"completion_tokens":7, "total_tokens":2.5}}"#,
        r#"{"usage":{"prompt_tokens":18446744073709551616,"completion_tokens":1e2,"\u0070rompt_tokens":3}}"#,
        r#"{"usage":{"prompt_tokens":"5","completion_tokens":-1},"choices":[]}"#,
        // Lists of numbers (embeddings), taken by `Scanner::more_numbers`: spacing
        // around commas, a list ending in a number, numbers before other values.
        r#"{"data":[{"embedding":[0.0123,-0.5, 1e-3 ,2E+2 , -0 ,7],"index":0}],"x":[1,[2,3],"4",5,null,-6.5]}"#,
    ];

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for len in 0..40 {
            for at in 0..len.max(1) {
                for special in [
                    "\"", "\\", "\n", "\u{1}", "\u{1f}", " ", "é", "/", "\u{7f}", "😀",
                ] {
                    let mut text = "x".repeat(len);
                    if len > 0 {
                        text.replace_range(at..at + 1, special);
                    }
                    let mut ours = Vec::new();
                    write_json_str(&mut ours, &text);
                    assert_eq!(ours, serde_json::to_vec(&text).unwrap(), "{text:?}");
                }
            }
        }
    }

    /// Every ASCII character, alone or two next to each other, anywhere in strings
    /// shorter and longer than a 16-byte block, and JSON text (a quote every few
    /// bytes), is written as serde writes it.
    #[test]
    fn every_character_is_escaped_as_serde_json_escapes_it() {
        let mut texts = vec![
            r#"[{"name":"person 1","email":"p1@example.com"},{"a":"\\"}]"#.repeat(5),
            "\u{8}\u{c}\n\r\t\u{0}\u{7}\u{1b}".to_owned(),
        ];
        for byte in 0u8..0x80 {
            let c = char::from(byte);
            for len in [1, 15, 16, 17, 40] {
                for at in [0, len / 2, len - 1] {
                    let mut text = "y".repeat(len);
                    text.replace_range(at..at + 1, &c.to_string());
                    texts.push(text.clone());
                    text.insert(at, c);
                    texts.push(text);
                }
            }
        }
        for text in texts {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &text);
            assert_eq!(ours, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }

    /// Long strings go 16 bytes at a time: a quote, an escape, a control character
    /// or a non-ASCII character at every position of strings up to 80 bytes long
    /// is found where serde_json finds it.
    #[test]
    fn every_position_of_a_long_string_is_checked() {
        for len in 0..80 {
            for at in 0..len {
                for special in ["\"", "\\n", "\\u00e9", "\n", "\u{1}", "é", "\\", "\\x"] {
                    let mut inner = "a".repeat(len);
                    inner.replace_range(at..at + 1, special);
                    agrees(format!(r#"{{"model":"{inner}","x":1}}"#).as_bytes());
                    agrees(format!(r#"{{"{inner}":[1,"{inner}"]}}"#).as_bytes());
                }
            }
        }
    }

    #[test]
    fn samples_truncated_and_edited_anywhere_are_judged_as_serde_json_judges_them() {
        let edits: &[u8] = b"\"\\,}]{[:x\x01\xff 0e-.";
        for sample in SAMPLES {
            let bytes = sample.as_bytes();
            agrees(bytes);
            for end in 0..bytes.len() {
                agrees(&bytes[..end]);
            }
            for at in 0..bytes.len() {
                let mut deleted = bytes.to_vec();
                deleted.remove(at);
                agrees(&deleted);
                for &edit in edits {
                    let mut edited = bytes.to_vec();
                    edited[at] = edit;
                    agrees(&edited);
                }
            }
        }
    }

    /// Every text and every truncation and byte edit of it, for differential tests.
    fn variants(sample: &str) -> Vec<Vec<u8>> {
        let edits: &[u8] = b"\"\\,}]{[:x\x01\xff 0e-.";
        let bytes = sample.as_bytes();
        let mut out = vec![bytes.to_vec()];
        for at in 0..bytes.len() {
            out.push(bytes[..at].to_vec());
            let mut deleted = bytes.to_vec();
            deleted.remove(at);
            out.push(deleted);
            // Longer changes: three bytes out, and a few in.
            let mut cut = bytes.to_vec();
            cut.drain(at..(at + 3).min(bytes.len()));
            out.push(cut);
            for inserted in [&b"ab"[..], "é".as_bytes(), b"a\"b", b"\n", br"\n"] {
                let mut longer = bytes.to_vec();
                longer.splice(at..at, inserted.iter().copied());
                out.push(longer);
            }
            for &edit in edits {
                let mut edited = bytes.to_vec();
                edited[at] = edit;
                out.push(edited);
            }
        }
        out
    }

    /// A scan that uses what it kept of the last text of the stream answers as a
    /// scan of the whole text, whatever came before: every sample, then every
    /// variant of every sample after it (edits inside strings take the first way,
    /// edits before `choices` neither), and every sample after every variant (the
    /// memo then holds the variant, if it was accepted).
    #[test]
    fn a_resumed_scan_answers_as_a_whole_scan() {
        let mut samples: Vec<&str> = SAMPLES.to_vec();
        samples.extend([
            "{}",
            r#"{"choices":[]}"#,
            r#"{"id":"c","choices":[]}"#,
            r#"{"id":"c",  "choices" : [ ] , "usage":{"prompt_tokens":1}}"#,
            r#"{"id":"c","usage":{"prompt_tokens":2},"choices":[{"delta":{}}],"usage":null}"#,
            r#"{"id":"c\u0041","object":"o","choices":[],"x":1}"#,
            r#"{"id":"c","object":"o","\u0063hoices":[],"choices":1}"#,
            r#"{"id":"c","\u0063hoices":[]}"#,
        ]);
        let whole = |text: &[u8]| std::str::from_utf8(text).ok().and_then(scan_object);
        let resumed = |text: &[u8], memo: &mut ScanMemo| {
            std::str::from_utf8(text)
                .ok()
                .and_then(|text| scan_object_resuming(text, memo))
        };
        let variants: Vec<Vec<u8>> = samples.iter().flat_map(|s| variants(s)).collect();
        for sample in &samples {
            let mut memo = ScanMemo::default();
            resumed(sample.as_bytes(), &mut memo);
            for variant in &variants {
                let mut memo_after_sample = memo.clone();
                assert_eq!(
                    resumed(variant, &mut memo_after_sample),
                    whole(variant),
                    "{sample} then {:?}",
                    String::from_utf8_lossy(variant)
                );
            }
        }
        for variant in &variants {
            let mut memo = ScanMemo::default();
            resumed(variant, &mut memo);
            for sample in &samples {
                let text = sample.as_bytes();
                assert_eq!(
                    resumed(text, &mut memo),
                    whole(text),
                    "{:?} then {sample}",
                    String::from_utf8_lossy(variant)
                );
            }
        }
    }

    /// After a chunk that differed from the one before only inside its `content`
    /// (the memo then knows where that string's quotes are), any text is judged as
    /// the whole scan judges it: every variant of the chunk (edits inside the
    /// string, on its quotes, before and after it, in the `usage` behind it) and
    /// chunks whose new text is short, long, empty or escaped; with a plain string
    /// and with one that holds escapes.
    #[test]
    fn after_a_change_inside_one_string_every_text_is_judged_as_a_whole_scan() {
        let front = r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":"#;
        let chunk = |content: &str| {
            format!(
                r#"{front}[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":{{"prompt_tokens":1,"completion_tokens":2}}}}"#
            )
        };
        let first = chunk("Hello");
        for second in [" world, a longer piece", r#"a\nb \"q\" \u00e9\\"#] {
            let second = chunk(second);
            let mut memo = ScanMemo::default();
            for text in [&first, &second] {
                assert_eq!(scan_object_resuming(text, &mut memo), scan_object(text));
            }
            assert!(memo.last_found.is_some() && memo.last_string.is_some());
            let mut thirds = variants(&second);
            for content in [
                "",
                "x",
                " world",
                "a much longer piece of new text",
                r"\n",
                r#"\""#,
                r"\u00e9",
                "é",
                r"a\nb",
                r"\\",
            ] {
                thirds.push(chunk(content).into_bytes());
            }
            for third in &thirds {
                let text = std::str::from_utf8(third);
                let mut memo = memo.clone();
                assert_eq!(
                    text.ok()
                        .and_then(|text| scan_object_resuming(text, &mut memo)),
                    text.ok().and_then(scan_object),
                    "{second} then {:?}",
                    String::from_utf8_lossy(third)
                );
                // And the text after it, through the memo it left.
                for fourth in [&first, &second] {
                    assert_eq!(scan_object_resuming(fourth, &mut memo), scan_object(fourth));
                }
            }
        }
    }

    /// Bytes not known to be UTF-8, read after a text through the memo, are judged
    /// as a check of all of them and a whole scan judge them: for chunks whose text
    /// has characters of two, three and four bytes, every byte of the text and the
    /// bytes around it replaced by, or joined with, bytes that start, continue or
    /// cannot be in a character, and every byte taken out; then the next text
    /// through the memo they left.
    #[test]
    fn bytes_read_through_the_memo_are_utf8_exactly_when_all_of_them_are() {
        let chunk = |content: &str| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}}}}]}}"#
            )
            .into_bytes()
        };
        let whole = |text: &[u8]| {
            std::str::from_utf8(text)
                .map_err(|_| NotUtf8)
                .map(scan_object)
        };
        let odd = [0x80u8, 0xA9, 0xBF, 0xC3, 0xE6, 0xF0, 0xF5, 0xFF, b'a', b' '];
        let (mut compared, mut total) = (0, 0);
        for (first, second) in [("café", "cafè au"), ("日本", "日本語"), ("a😀", "a😀b😁")]
        {
            let (first, second) = (chunk(first), chunk(second));
            let mut memo = ScanMemo::default();
            for text in [&first, &second] {
                assert_eq!(scan_bytes_resuming(text, &mut memo), whole(text));
            }
            let content = second.windows(9).position(|w| w == b"content\":").unwrap() + 10;
            let mut thirds = Vec::new();
            for at in content - 2..second.len() - 3 {
                for &byte in &odd {
                    let mut replaced = second.clone();
                    replaced[at] = byte;
                    let mut inserted = second.clone();
                    inserted.insert(at, byte);
                    thirds.extend([replaced, inserted]);
                }
                let mut removed = second.clone();
                removed.remove(at);
                thirds.push(removed);
            }
            for third in &thirds {
                let mut memo = memo.clone();
                compared += usize::from(memo.same_but_one_string(third).is_some());
                total += 1;
                let read = scan_bytes_resuming(third, &mut memo);
                assert_eq!(read, whole(third), "{:?}", String::from_utf8_lossy(third));
                for fourth in [&first, &second] {
                    assert_eq!(scan_bytes_resuming(fourth, &mut memo), whole(fourth));
                }
            }
        }
        // Most of them went by the comparison, not the whole check.
        assert!(compared * 2 > total, "{compared} of {total}");
    }

    /// The memo numbers its texts and says which bytes changed when it compared a
    /// text with the one before; two memos (a copy too) never share a number.
    #[test]
    fn the_memo_tells_each_texts_place_and_change() {
        let chunk = |content: &str| {
            format!(
                r#"{{"id":"c","object":"o","created":1,"model":"m","choices":[{{"delta":{{"content":"{content}"}}}}]}}"#
            )
        };
        let mut memo = ScanMemo::default();
        assert_eq!(memo.last_change(), None);
        let first = chunk("ab");
        scan_object_resuming(&first, &mut memo).unwrap();
        let place = memo.last_change().unwrap();
        assert_eq!((place.seq, place.changed), (1, None));
        scan_object_resuming(&chunk("aXYb"), &mut memo).unwrap();
        let at = first.find("ab").unwrap();
        let second = memo.last_change().unwrap();
        assert_eq!((second.memo, second.seq), (place.memo, 2));
        assert_eq!(second.changed, Some(at + 1..at + 3));
        scan_object_resuming(&chunk("aXYb"), &mut memo).unwrap();
        let len = chunk("aXYb").len();
        assert_eq!(memo.last_change().unwrap().changed, Some(len..len));
        // Not valid: nothing is known of the next one's change.
        assert!(scan_object_resuming("{", &mut memo).is_none());
        scan_object_resuming(&first, &mut memo).unwrap();
        assert_eq!(memo.last_change().unwrap().changed, None);
        let mut copy = memo.clone();
        scan_object_resuming(&first, &mut copy).unwrap();
        let mut other = ScanMemo::default();
        scan_object_resuming(&first, &mut other).unwrap();
        let ids = [
            place.memo,
            copy.last_change().unwrap().memo,
            other.last_change().unwrap().memo,
        ];
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
    }

    /// A stream as servers write it, chunk after chunk through one memo: text
    /// deltas of every length, escapes, a tool call, a finish reason, the usage
    /// chunk; each answer is the whole scan's.
    #[test]
    fn a_stream_of_chunks_is_judged_chunk_by_chunk_as_a_whole_scan() {
        let front = r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":"fp","choices":"#;
        let mut chunks = vec![format!(
            r#"{front}[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
        )];
        for content in [
            "Hello",
            " wor",
            "ld",
            "",
            "!",
            r"\n\n",
            "é😀",
            r#"\"q\""#,
            "a",
            r"b\u0041",
            "ok",
            "ok",
            " long piece of text that is longer than sixteen bytes",
        ] {
            chunks.push(format!(
                r#"{front}[{{"index":0,"delta":{{"content":"{content}"}},"logprobs":null,"finish_reason":null}}]}}"#
            ));
        }
        chunks.push(format!(
            r#"{front}[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"q\":1}}"}}}}]}},"finish_reason":null}}]}}"#
        ));
        chunks.push(format!(
            r#"{front}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#
        ));
        chunks.push(format!(
            r#"{front}[],"usage":{{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}}}"#
        ));
        chunks.push(format!(
            r#"{front}[],"usage":{{"prompt_tokens":5,"completion_tokens":19,"total_tokens":24}}}}"#
        ));
        let mut memo = ScanMemo::default();
        for chunk in &chunks {
            let whole = scan_object(chunk);
            assert!(whole.is_some(), "{chunk}");
            assert_eq!(scan_object_resuming(chunk, &mut memo), whole, "{chunk}");
        }
    }

    #[test]
    fn odd_values_anywhere_are_judged_as_serde_json_judges_them() {
        let values = [
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\udbff""#,
            r#""\ud83d\ude00""#,
            "\"\t\"",
            "\"\u{7f}\"",
            "01",
            "1.",
            "-",
            "1e",
            "1e+",
            ".5",
            "+1",
            "-0",
            "1e309",
            "-1e400",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "1e-400",
            &"9".repeat(310),
            &format!("0.{}", "1".repeat(400)),
            "tru",
            "nul",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "{}",
            "[]",
            "[[[]]]",
            "{\"\\u0041\":{}}",
        ];
        let frame = |member: &str| {
            [
                format!(
                    r#"{{"id":"c","object":"o","created":1,"model":"m","choices":[],"x":{member}}}"#
                ),
                format!(r#"{{"id":"c","choices":[{member}],"usage":{{"u":{member}}}}}"#),
                format!(r#"{{"id":{member},"model":"m"}}"#),
                member.to_owned(),
            ]
        };
        for value in values {
            for text in frame(value) {
                agrees(text.as_bytes());
            }
        }
        // Escaped keys are decoded before they are compared.
        agrees(br#"{"\u0069d":"c","id":"d"}"#);
        agrees(br#"{"\u0069d":null,"choices":[]}"#);
        // Whitespace serde_json does not take, and bytes after the object.
        agrees(b"\x0c{}");
        agrees("\u{feff}{}".as_bytes());
        agrees(b"{} {}");
        agrees(b"{}\n\r\t ");
    }

    #[test]
    fn the_usage_member_is_located() {
        for (text, member) in [
            (r#"{"usage":null}"#, Some(r#""usage":null"#)),
            (
                r#"{"id":"c", "usage" : {"a":[1]} ,"x":1}"#,
                Some(r#""usage" : {"a":[1]}"#),
            ),
            (r#"{"usage":7}"#, Some(r#""usage":7"#)),
            (r#"{"id":"c","x":{"usage":1}}"#, None),
        ] {
            let top = scan_object(text).unwrap();
            assert_eq!(top.usage_member.map(|(a, b)| &text[a..b]), member, "{text}");
        }
        let top = scan_object(r#"{"choices":[ ]}"#).unwrap();
        assert_eq!(top.choices, Shape::Expected(true));
        let top = scan_object(r#"{"choices":[{}]}"#).unwrap();
        assert_eq!(top.choices, Shape::Expected(false));
    }

    #[test]
    fn common_ends_are_counted_byte_for_byte() {
        // Past three 32-byte blocks, so that every block, integer and tail path runs.
        let base: Vec<u8> = (0..110u8).map(|b| b'a' + b % 26).collect();
        for len in 0..base.len() {
            for at in 0..len {
                let a = &base[..len];
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert_eq!(common_prefix(a, &b), at, "{len} {at}");
                assert_eq!(common_suffix(a, &b), len - at - 1, "{len} {at}");
                // A second difference never moves the first one found from each end.
                let mut c = b.clone();
                c[(at + 1 + len / 3) % len] ^= 0x01;
                let (first, last) = (
                    at.min((at + 1 + len / 3) % len),
                    at.max((at + 1 + len / 3) % len),
                );
                assert_eq!(common_prefix(a, &c), first, "{len} {at}");
                assert_eq!(common_suffix(a, &c), len - last - 1, "{len} {at}");
                // Of different lengths: what the shorter shares with the longer.
                assert_eq!(common_prefix(a, &base), len);
                assert_eq!(common_suffix(&base[at..], &base), base.len() - at);
            }
        }
    }

    #[test]
    fn the_utf8_check_agrees_with_the_standard_library() {
        let pieces: [&[u8]; 9] = [
            b"plain ascii ",
            "é".as_bytes(),
            "\u{20ac}".as_bytes(),
            "\u{1f600}".as_bytes(),
            b"\xC3",             // a lead byte alone
            b"\xE2\x82",         // a sequence cut short
            b"\xC0\xAF",         // overlong
            b"\xED\xA0\x80",     // an encoded surrogate
            b"\xF4\x90\x80\x80", // past U+10FFFF
        ];
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200] {
            for (i, piece) in pieces.iter().enumerate() {
                for at in [0, len / 2, len] {
                    let mut text = "x".repeat(len).into_bytes();
                    text.splice(at..at, piece.iter().copied());
                    let std = std::str::from_utf8(&text).ok();
                    assert_eq!(utf8(&text), std, "piece {i} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded_like_serde_json_and_never_overflows() {
        for depth in [100, 125, 126, 127, 128, 129, 200, 100_000] {
            let array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            agrees(format!(r#"{{"x":{array}}}"#).as_bytes());
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            agrees(format!(r#"{{"x":{objects}}}"#).as_bytes());
        }
    }

    #[test]
    fn random_edits_of_samples_are_judged_as_serde_json_judges_them() {
        // A fixed-seed generator, so that a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: &[&[u8]] = &[
            b"\"",
            b"\\",
            b"\\u",
            b"d800",
            b",",
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b"1e400",
            b"null",
            b" ",
            "é".as_bytes(),
            b"\x00",
            b"\xc3",
        ];
        for _ in 0..30_000 {
            let sample = SAMPLES[next() as usize % SAMPLES.len()].as_bytes();
            let mut text = sample.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = next() as usize % (text.len() + 1);
                let piece = pieces[next() as usize % pieces.len()];
                if next() % 2 == 0 && at < text.len() {
                    text.remove(at);
                }
                text.splice(at..at, piece.iter().copied());
            }
            agrees(&text);
        }
    }
}

#[cfg(test)]
mod member_tests {
    use super::*;

    #[test]
    fn member_spans_find_top_level_values_only() {
        let text = r#"{"a": {"model": "inner"}, "model" : "m-1", "x": [1, {"model": 2}], "mo\u0064el": 3}"#;
        let spans = member_spans(text, "model", usize::MAX).unwrap();
        let values: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(values, ["\"m-1\"", "3"]);
        assert_eq!(member_spans(text, "model", 1).unwrap().len(), 1);
        assert_eq!(member_str(text, "model").as_deref(), Some("m-1"));
        assert_eq!(
            member_str(r#"{"type":"a\"b"}"#, "type").as_deref(),
            Some("a\"b")
        );
        assert_eq!(member_str(r#"{"type":1}"#, "type"), None);
        assert_eq!(member_spans("[]", "model", 1), None);
        assert_eq!(member_spans("{}", "model", 1), Some(vec![]));
    }
}
