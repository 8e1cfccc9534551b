//! What the providers that write their upstream request straight from the client's
//! bytes share (`anthropic::raw_request`, `google::raw_request`): reading the
//! members of a chat request that `api::raw_chat` let through, and its messages
//! whose content is text, without a tree. Each writer answers `None` for
//! anything it leaves to its tree translation, which then reads the request as
//! before; so do these readers, for anything not in the shape they know.

use std::borrow::Cow;

use serde_json::Value;

use crate::api::raw_body::named_members_of;

use crate::json_scan::{
    first_value, has_escape, string_value, write_compact, write_json_str, JsonText, Walk,
};

/// The values of the top-level members of `body` (a chat request a door's reader
/// checked, all of it: its values are skipped unchecked, see `Walk::checked`)
/// named in `wanted`, as written (`null` included), in `wanted`'s order, and the
/// members that `take` takes (it answers `Some(true)` for them, having walked their
/// value: a large member read in the one walk, not skipped and walked again);
/// `take` answers `Some(false)` for the others, `None` to refuse the request. `n`
/// is taken when it is `1` or `null` (one choice, as without it). `None` for a
/// member in `left_to_tree`, a member given twice or a key with an escape (which
/// might spell one); every other member is skipped (`model` is the routed one,
/// `stream` the call's, the rest dropped by both translations).
pub fn members_and<'a, const N: usize>(
    body: &'a str,
    wanted: [&str; N],
    left_to_tree: &[&str],
    mut take: impl FnMut(&mut Walk<'a>, &'a str) -> Option<bool>,
) -> Option<[Option<&'a str>; N]> {
    let mut values = [None; N];
    let mut walk = Walk::checked(body);
    walk.object(|walk, key| {
        if let Some(i) = wanted.iter().position(|w| *w == key) {
            if values[i].is_some() {
                return None;
            }
            values[i] = Some(walk.skip()?);
            return Some(());
        }
        if key == "n" {
            let n = walk.skip()?;
            return (n == "1" || n == "null").then_some(());
        }
        if has_escape(key) || left_to_tree.contains(&key) {
            return None;
        }
        if take(walk, key)? {
            return Some(());
        }
        walk.skip().map(drop)
    })?;
    walk.done()?;
    Some(values)
}

/// One message of a conversation whose content is text.
pub struct TextMessage<'a> {
    pub role: Cow<'a, str>,
    /// Its texts: a string content is one, a list of text parts one per part,
    /// `null` or no content none. Both translations treat each part's text as they
    /// treat a string content.
    pub texts: Vec<JsonText<'a>>,
    /// Whether the content was a string (a tool message's is kept as a string, its
    /// parts as blocks).
    pub string: bool,
}

/// A message and the members [`text_messages_and`] was asked for.
pub type MessageAnd<'a, const N: usize> = (TextMessage<'a>, [Option<&'a str>; N]);

/// The messages of the list at the walk (a checked body's), in order, with the
/// members of each message named in `also`, as written (`None` for those it does
/// not have). `None` for a message whose content is not a string, `null` or a list
/// of plain text parts (`{"type":"text","text":…}` and nothing else: a
/// `cache_control` is for the tree), with a member in `left_to_tree`, with a member
/// given twice or a key with an escape, or without a string `role`. Other members
/// are skipped (neither translation reads them).
pub fn text_messages_and<'a, const N: usize>(
    walk: &mut Walk<'a>,
    left_to_tree: &[&str],
    also: [&str; N],
) -> Option<Vec<MessageAnd<'a, N>>> {
    let mut list = Vec::new();
    walk.array(|walk| {
        let (mut role, mut texts, mut string) = (None, None, false);
        let mut values = [None; N];
        walk.object(|walk, key| match key {
            "role" => first_value(&mut role, || walk.string()),
            "content" => first_value(&mut texts, || {
                Some(if walk.null() {
                    Vec::new()
                } else if walk.at_string() {
                    string = true;
                    vec![walk.text()?]
                } else {
                    text_parts(walk)?
                })
            }),
            _ if has_escape(key) || left_to_tree.contains(&key) => None,
            _ => match also.iter().position(|name| *name == key) {
                Some(i) => first_value(&mut values[i], || walk.skip()),
                None => walk.skip().map(drop),
            },
        })?;
        list.push((
            TextMessage {
                role: role?,
                texts: texts.unwrap_or_default(),
                string,
            },
            values,
        ));
        Some(())
    })?;
    Some(list)
}

/// A list of parts that are each `{"type":"text","text":"…"}` (members in any
/// order, nothing else): their texts.
fn text_parts<'a>(walk: &mut Walk<'a>) -> Option<Vec<JsonText<'a>>> {
    let mut texts = Vec::new();
    walk.array(|walk| {
        let (mut kind, mut text) = (None, None);
        walk.object(|walk, key| match key {
            "type" => first_value(&mut kind, || walk.string()),
            "text" => first_value(&mut text, || walk.text()),
            _ => None,
        })?;
        (kind? == "text").then_some(())?;
        texts.push(text?);
        Some(())
    })?;
    Some(texts)
}

/// A function tool's `description` (at the walk) as both translations take it: a
/// non-empty string, or nothing (another value is dropped).
pub fn description<'a>(walk: &mut Walk<'a>) -> Option<Option<JsonText<'a>>> {
    Some(if walk.at_string() {
        Some(walk.text()?).filter(|d| !d.is_empty())
    } else {
        walk.skip()?;
        None
    })
}

/// A positive integer as the translations read a token count: absent or `null`
/// (`Some(None)`), or an integer from 1 to `max`; `None` for anything else (the
/// translations refuse it).
pub fn positive(raw: Option<&str>, max: u64) -> Option<Option<u64>> {
    match raw {
        None | Some("null") => Some(None),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .map(Some),
    }
}

/// The strings of `stop` (a string or a list of strings) as written, or `None`
/// when it is anything else; absent or `null` is no strings.
pub fn stop_strings(raw: Option<&str>) -> Option<Vec<Cow<'_, str>>> {
    let mut strings = Vec::new();
    match raw {
        None | Some("null") => {}
        Some(raw) => {
            let mut walk = Walk::new(raw);
            if walk.at_string() {
                strings.push(walk.string()?);
            } else {
                walk.array(|walk| {
                    strings.push(walk.string()?);
                    Some(())
                })?;
            }
        }
    }
    Some(strings)
}

/// A tool call's `function` (at the walk) as both translations read it: its name (a
/// non-empty string) and its arguments object, written (see [`arguments_object`]).
/// `None` for a function the translation refuses.
pub fn called_function<'a>(
    walk: &mut Walk<'a>,
    null_is_empty: bool,
) -> Option<(Cow<'a, str>, Vec<u8>)> {
    let [name, arguments] = named_members_of(walk.skip()?, ["name", "arguments"])?;
    let name = string_value(name?)?;
    (!name.is_empty()).then_some((name, arguments_object(arguments, null_is_empty)?))
}

/// A tool call's `arguments` (a string, `null` or none, as `raw_chat` lets them
/// through; an object is taken as it is) → the arguments object as serde writes
/// it, as both translations take them: absent, `null` or a blank string is `{}`; a
/// string must hold a JSON object or, where `null_is_empty` (Gemini's
/// `request::parse_arguments`), JSON `null` (`{}` too). `None` for anything else
/// (the translation refuses it).
pub fn arguments_object(arguments: Option<&str>, null_is_empty: bool) -> Option<Vec<u8>> {
    let object = match arguments {
        None | Some("null") => return Some(b"{}".to_vec()),
        Some(raw) if raw.starts_with('"') => {
            let text = string_value(raw)?;
            if text.trim().is_empty() {
                return Some(b"{}".to_vec());
            }
            if let Some(object) = compact_object(&text) {
                return Some(object);
            }
            serde_json::from_str::<Value>(&text).ok()?
        }
        Some(raw) if raw.starts_with('{') => serde_json::from_str::<Value>(raw).ok()?,
        Some(_) => return None,
    };
    match object {
        Value::Null if null_is_empty => Some(b"{}".to_vec()),
        Value::Object(_) => {
            Some(serde_json::to_vec(&object).expect("a JSON value always serializes"))
        }
        _ => None,
    }
}

/// Arguments (`text`, decoded) that are a JSON object `json_scan::write_compact`
/// writes as serde writes it: that object, written. `None` for the rest, which
/// [`arguments_object`] reads with serde.
fn compact_object(text: &str) -> Option<Vec<u8>> {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
        .then_some(())?;
    let mut out = Vec::with_capacity(text.len());
    write_compact(text, &mut out)?;
    Some(out)
}

/// `[<head>"…"},…]`: each text as a JSON string in an object that `head` opens
/// (Anthropic's `{"type":"text","text":`, Gemini's `{"text":`).
pub fn write_text_objects(out: &mut Vec<u8>, head: &[u8], texts: &[JsonText<'_>]) {
    out.push(b'[');
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(head);
        text.write(out);
        out.push(b'}');
    }
    out.push(b']');
}

/// `["…",…]`.
pub fn write_strings(out: &mut Vec<u8>, texts: &[Cow<'_, str>]) {
    out.push(b'[');
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, text);
    }
    out.push(b']');
}

/// Chat requests for the writers' differential tests: messages and any of the
/// members a writer reads, leaves to its tree or drops, with values it must write
/// as the tree does, and values the tree refuses.
#[cfg(test)]
pub mod arb {
    use proptest::prelude::*;

    /// A JSON string as a client may write it: plain, blank, escaped, non-ASCII.
    fn string() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            r#""hi""#,
            r#""""#,
            r#""  \n\t ""#,
            r#""ends in space  \n""#,
            r#"" lead""#,
            r#""a\"b\\c\u00e9\ud83d\ude00\/""#,
            "\"é 😀 </script>\u{2028}\"",
            r#""\u0041\u0020""#,
            r#""\u3000""#,
            // Escapes as serde_json writes them (copied as written), and not.
            r#""{\"a\": \"b\\\\c\"}\u001f\b\f""#,
            r#""line\u000a\u001F""#,
        ])
    }

    fn message() -> impl Strategy<Value = String> {
        let role = prop_oneof![
            8 => Just(r#""user""#),
            6 => Just(r#""assistant""#),
            2 => Just(r#""system""#),
            1 => Just(r#""developer""#),
            1 => Just(r#""tool""#),
            1 => Just(r#""wizard""#),
        ];
        let part = prop_oneof![
            8 => string().prop_map(|s| format!(r#"{{"type":"text","text":{s}}}"#)),
            2 => string().prop_map(|s| format!(r#"{{"text":{s},"type":"text"}}"#)),
            1 => string().prop_map(|s| {
                format!(r#"{{"type":"text","text":{s},"cache_control":{{"type":"ephemeral"}}}}"#)
            }),
            1 => Just(r#"{"type":"refusal","refusal":"no"}"#.to_owned()),
            1 => Just(r#"{"type":"new_kind","x":1}"#.to_owned()),
        ];
        let content = prop_oneof![
            10 => string().prop_map(str::to_owned),
            2 => Just("null".to_owned()),
            4 => prop::collection::vec(part, 0..4).prop_map(|parts| format!("[{}]", parts.join(","))),
        ];
        let extra = prop_oneof![
            16 => Just(""),
            2 => Just(r#""name":"n""#),
            1 => Just(r#""tool_call_id":"c1""#),
            1 => Just(r#""reasoning_content":"r""#),
            1 => Just(r#""tool_calls":null"#),
            1 => Just(r#""function_call":null"#),
        ];
        (
            role,
            prop::option::weighted(0.9, content),
            extra,
            any::<bool>(),
        )
            .prop_map(|(role, content, extra, content_first)| {
                let mut members = vec![format!(r#""role":{role}"#)];
                if let Some(content) = content {
                    let member = format!(r#""content":{content}"#);
                    if content_first {
                        members.insert(0, member);
                    } else {
                        members.push(member);
                    }
                }
                if !extra.is_empty() {
                    members.push(extra.to_owned());
                }
                format!("{{{}}}", members.join(","))
            })
    }

    /// A chat request: messages and any of the members the writer reads, leaves to
    /// the tree or drops, with values it must write, and values the tree refuses.
    pub fn request() -> impl Strategy<Value = String> {
        let member = |key: &'static str, values: Vec<&'static str>| {
            prop::option::weighted(0.3, prop::sample::select(values))
                .prop_map(move |value| value.map(|value| format!(r#""{key}":{value}"#)))
                .boxed()
        };
        // Members the writer leaves to the tree, rarely: most requests are written.
        let rare = |key: &'static str, value: &'static str| {
            prop::option::weighted(0.03, Just(format!(r#""{key}":{value}"#))).boxed()
        };
        let members = vec![
            member("max_tokens", vec!["null", "1", "100", "100000000"]),
            member("max_completion_tokens", vec!["null", "7", "1"]),
            member(
                "temperature",
                vec![
                    "null",
                    "0",
                    "0.7",
                    "1.5",
                    "2",
                    "0.1e1",
                    "1E0",
                    "0.30000000000000004",
                ],
            ),
            member(
                "top_p",
                vec!["null", "0.9", "1", "5e-1", "0.123456789012345678"],
            ),
            member(
                "stop",
                vec![
                    "null",
                    r#""x""#,
                    r#"" ""#,
                    r#""""#,
                    r#"["a"," ","\u0062",""]"#,
                    r#"["1","2","3","4","5",""]"#,
                    r#"["1","2","3","4","5","6"]"#,
                    r#"[]"#,
                    r#""\n""#,
                ],
            ),
            member(
                "user",
                vec![
                    "null",
                    r#""""#,
                    r#""u-1""#,
                    r#""a@b.c""#,
                    r#""+1 (555) 123-4567""#,
                    r#""\u00e9l""#,
                ],
            ),
            member("n", vec!["null", "1", "1", "1", "2"]),
            member("stream", vec!["true", "false", "null"]),
            // Read without a tree only on a stream, asking for the usage.
            prop::option::weighted(
                0.15,
                prop::sample::select(vec![
                    r#"{"include_usage":true}"#,
                    r#"{"include_obfuscation":false,"include_usage":true}"#,
                ]),
            )
            .prop_map(|value| value.map(|value| format!(r#""stream_options":{value}"#)))
            .boxed(),
            member("seed", vec!["3", "-4", "18446744073709551615", "2.0"]),
            member("presence_penalty", vec!["null", "0.5", "-1", "1.50", "2E0"]),
            member("frequency_penalty", vec!["0", "1e-7"]),
            member("metadata", vec![r#"{"k":"v"}"#]),
            rare("response_format", r#"{"type":"text"}"#),
            rare("tool_choice", r#""none""#),
            rare("reasoning_effort", r#""low""#),
            rare("top_k", "3"),
            rare("functions", "[]"),
            member("unknown_member", vec![r#"[1,{"a":null}]"#]),
        ];
        (
            prop::collection::vec(message(), 0..5),
            members,
            prop::sample::select(vec![r#""gpt-4o""#, r#""m\u0031""#]),
        )
            .prop_flat_map(|(messages, members, model)| {
                let mut all: Vec<String> = members.into_iter().flatten().collect();
                all.push(format!(r#""messages":[{}]"#, messages.join(",")));
                all.push(format!(r#""model":{model}"#));
                Just(all).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(",")))
    }

    /// Requests `raw_chat` reads that both writers leave to their trees (each
    /// writer's test adds its own).
    pub const LEFT_TO_EVERY_TREE: [&str; 6] = [
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"low"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":3}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"new_kind","x":1}]}]}"#,
    ];

    /// A writer's differential test: `check` gets each of 4,000 generated requests
    /// that `raw_chat` reads (with its number) and answers whether the writer wrote
    /// it, having held what it wrote to its tree; at least 1,000 must be read and
    /// 300 written, so that the comparison is not vacuous.
    pub fn each_raw_request(check: impl FnMut(usize, &str) -> bool) {
        each_raw_request_of(request(), 1000, 300, check);
    }

    /// [`each_raw_request`] over `strategy`'s requests, at least `read` of them read
    /// by `raw_chat` and `written` written.
    pub fn each_raw_request_of(
        strategy: impl Strategy<Value = String>,
        read: usize,
        written: usize,
        mut check: impl FnMut(usize, &str) -> bool,
    ) {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut raw_requests, mut wrote) = (0, 0);
        for case in 0..4000 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            if crate::api::raw_chat::read(&bytes::Bytes::from(text.clone())).is_none() {
                continue;
            }
            raw_requests += 1;
            if check(case, &text) {
                wrote += 1;
            }
        }
        assert!(raw_requests > read, "{raw_requests} requests read raw");
        assert!(wrote > written, "{wrote} of {raw_requests} written");
    }

    /// `"key":value` with one of `values`, in about a third of the requests.
    fn sometimes(key: &'static str, values: Vec<&'static str>) -> BoxedStrategy<Option<String>> {
        prop::option::weighted(0.35, prop::sample::select(values))
            .prop_map(move |value| value.map(|value| format!(r#""{key}":{value}"#)))
            .boxed()
    }

    /// `{…}` of the members that are there, in the order given.
    fn object(members: Vec<Option<String>>) -> String {
        let members: Vec<String> = members.into_iter().flatten().collect();
        format!("{{{}}}", members.join(","))
    }

    /// A function tool as agents send them, and tools the translations refuse or
    /// read in their own way: no or odd `type`, an empty or escaped name, a
    /// description that is not a string, a schema without a `type` (or with a key
    /// that might spell it), written with spaces, `null`, or not an object.
    fn tool() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            24 => Just(r#""name":"lookup""#),
            1 => Just(r#""name":"f\u0031""#),
            1 => Just(r#""name":"""#),
            1 => Just(r#""name":5"#),
        ];
        let schema = prop_oneof![
            8 => Just(r#"{"type":"object","properties":{"q":{"type":"string","description":"free text"},"n":{"type":"integer","minimum":1}},"required":["q"]}"#),
            3 => Just(r#"{"properties":{"q":{"type":"string"}},"required":["q"]}"#),
            1 => Just(r#"{"type":"object","properties":{}}"#),
            1 => Just("{}"),
            1 => Just("{ }"),
            1 => Just(r#"{ "properties" : { "n" : { "maximum" : 1e3 } } }"#),
            1 => Just(r#"{"type":"object","type":"object"}"#),
            1 => Just("null"),
            1 => Just(r#"{"\u0074ype":"object"}"#),
            1 => Just("[]"),
            1 => Just(r#""object""#),
        ];
        (
            name,
            sometimes(
                "description",
                vec![r#""Find people.""#, r#""""#, "null", "3", r#""say \"hi\"""#],
            ),
            prop::option::weighted(0.9, schema),
            sometimes("strict", vec!["true"]),
            prop_oneof![
                20 => Just(Some(r#""type":"function""#.to_owned())),
                1 => Just(Some(r#""type":"custom""#.to_owned())),
                1 => Just(Some(r#""type":"\u0066unction""#.to_owned())),
                1 => Just(None),
            ],
            sometimes("cache_control", vec![r#"{"type":"ephemeral"}"#, "null"]),
            prop::option::weighted(0.97, Just(())),
        )
            .prop_map(
                |(name, description, schema, strict, kind, cache, with_function)| {
                    let function = object(vec![
                        Some(name.to_owned()),
                        description,
                        schema.map(|schema| format!(r#""parameters":{schema}"#)),
                        strict,
                    ]);
                    object(vec![
                        kind,
                        with_function.map(|()| format!(r#""function":{function}"#)),
                        cache,
                    ])
                },
            )
    }

    /// A tool call's or a tool message's id: usual, with characters Anthropic does
    /// not take in ids, empty, or not a string, and the gateway's ids for Gemini
    /// calls: with a thought signature (good base64 or not), and without one (which
    /// the gateway never kept: no test remembers this stem).
    fn call_id() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            6 => Just(r#""call_1""#),
            3 => Just(r#""call_2""#),
            2 => Just(r#""call:3/x""#),
            1 => Just(r#""""#),
            1 => Just("7"),
            2 => Just(r#""call_arbstem_0_0__thought__CiQB4_H-abc""#),
            1 => Just(r#""call_arbstem_0_1__thought__%%""#),
            2 => Just(r#""call_arbstem_0_2""#),
        ]
    }

    /// An assistant message with tool calls (their arguments a JSON object as a
    /// string, blank, an object, `null`, or what the translations refuse).
    fn assistant_with_calls() -> impl Strategy<Value = String> {
        let arguments = prop::sample::select(vec![
            r#""{\"q\": \"platform team\", \"n\": 2.50, \"f\": [\"a\u0041\"]}""#,
            r#""{}""#,
            r#""{\"path\": \"src/main.rs\", \"limit\": 20, \"all\": false}""#,
            r#"" {\"a\":1,\"a\":[2]}""#,
            r#""null""#,
            r#""""#,
            r#"" ""#,
            "null",
            r#""[1]""#,
            r#""not json""#,
        ]);
        let call = (
            call_id(),
            prop_oneof![8 => Just(r#""lookup""#), 1 => Just(r#""""#)],
            prop::option::weighted(0.9, arguments),
            prop::option::weighted(0.9, Just(r#""type":"function""#)),
        )
            .prop_map(|(id, name, arguments, kind)| {
                let function = object(vec![
                    Some(format!(r#""name":{name}"#)),
                    arguments.map(|a| format!(r#""arguments":{a}"#)),
                ]);
                object(vec![
                    Some(format!(r#""id":{id}"#)),
                    kind.map(str::to_owned),
                    Some(format!(r#""function":{function}"#)),
                ])
            });
        (
            prop::option::weighted(
                0.7,
                prop::sample::select(vec!["null", r#""Looking.""#, r#""  ""#, r#"[{"type":"text","text":"On it. "}]"#]),
            ),
            prop_oneof![
                8 => prop::collection::vec(call, 0..3).prop_map(|calls| format!("[{}]", calls.join(","))),
                1 => Just("null".to_owned()),
                1 => Just("[{}]".to_owned()),
            ],
        )
            .prop_map(|(content, calls)| {
                object(vec![
                    Some(r#""role":"assistant""#.to_owned()),
                    content.map(|c| format!(r#""content":{c}"#)),
                    Some(format!(r#""tool_calls":{calls}"#)),
                ])
            })
    }

    /// A tool message (or, rarely, a legacy function result): its result a string
    /// (blank too, JSON or not), text parts, `null`, or none; sometimes a `name`.
    fn tool_message() -> impl Strategy<Value = String> {
        let content = prop::sample::select(vec![
            r#""[{\"name\":\"p\"}]""#,
            r#""{\"a\": 1.50, \"a\": \"\\u0041\"}""#,
            r#""12""#,
            r#""not \"json\"""#,
            r#""Error: \"x\" failed\n""#,
            r#"" [1]""#,
            r#""\n{\"a\":1}""#,
            r#""  ""#,
            "null",
            r#"[{"type":"text","text":"found"},{"type":"text","text":" "}]"#,
            r#"[{"type":"text","text":"{\"a\":"},{"type":"text","text":"1}"}]"#,
            "[]",
        ]);
        (
            prop_oneof![12 => Just("tool"), 1 => Just("function")],
            prop::option::weighted(0.98, call_id()),
            prop::option::weighted(0.97, content),
            sometimes("name", vec![r#""lookup""#, r#""""#, "5", r#""n\u0031""#]),
        )
            .prop_map(|(role, id, content, name)| {
                object(vec![
                    Some(format!(r#""role":"{role}""#)),
                    id.map(|id| format!(r#""tool_call_id":{id}"#)),
                    content.map(|c| format!(r#""content":{c}"#)),
                    name,
                ])
            })
    }

    /// An agent's chat request: a conversation with tool calls and their results
    /// (some missing, some out of place), tools, a `tool_choice` and
    /// `parallel_tool_calls`, with values the translations take and values they
    /// refuse.
    pub fn agent_request() -> impl Strategy<Value = String> {
        let message = prop_oneof![
            3 => message(),
            2 => assistant_with_calls(),
            2 => tool_message(),
        ];
        let tools = prop_oneof![
            8 => prop::collection::vec(tool(), 0..4).prop_map(|tools| format!("[{}]", tools.join(","))),
            1 => Just("null".to_owned()),
            1 => Just("{}".to_owned()),
        ];
        let members = vec![
            prop::option::weighted(0.7, tools)
                .prop_map(|tools| tools.map(|t| format!(r#""tools":{t}"#)))
                .boxed(),
            sometimes(
                "tool_choice",
                vec![
                    r#""auto""#,
                    r#""none""#,
                    r#""required""#,
                    r#""sometimes""#,
                    r#"{"type":"function","function":{"name":"lookup"}}"#,
                    r#"{"function":{"name":"lookup"}}"#,
                    r#"{"type":5,"function":{"name":"lookup"}}"#,
                    r#"{"type":"function","function":{"name":""}}"#,
                    r#"{"type":"tool","function":{"name":"lookup"}}"#,
                    r#"{"type":"function"}"#,
                    "null",
                    "3",
                ],
            ),
            sometimes(
                "parallel_tool_calls",
                vec!["true", "false", "false", "null", "0"],
            ),
            sometimes("max_tokens", vec!["100", "null"]),
            sometimes("temperature", vec!["0.5", "1.5"]),
            sometimes("stream", vec!["true", "false"]),
        ];
        (prop::collection::vec(message, 1..7), members)
            .prop_flat_map(|(messages, members)| {
                let mut all: Vec<String> = members.into_iter().flatten().collect();
                all.push(format!(r#""messages":[{}]"#, messages.join(",")));
                all.push(r#""model":"gpt-4o""#.to_owned());
                Just(all).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(",")))
    }
}
