//! Model routing: ordered shell-style glob rules compiled once; the first rule in
//! config order that matches the whole model name wins. The usual patterns (an
//! exact name, a literal prefix and `*`, `*` alone) are matched by comparing
//! strings; the others by a compiled glob.
//!
//! Patterns follow Python's `fnmatch.fnmatchcase`, as the reference did: `*`, `?`,
//! `[seq]`, `[!seq]`, case-sensitive, no path semantics, and braces and backslashes
//! are ordinary characters.

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::split_route_target;

/// Which upstream model a rule sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteModel {
    /// `connection.*`: the client's model name, unchanged.
    PassThrough,
    /// `connection.name`: this model name.
    Fixed(String),
    /// `connection`: the connection's own `model` setting.
    ConnectionDefault,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: String,
    pub connection: String,
    pub model: RouteModel,
}

/// The compiled routing table.
#[derive(Debug, Clone)]
pub struct Router {
    /// One per rule, in the rules' order.
    matchers: Vec<Matcher>,
    rules: Vec<Rule>,
}

/// How one pattern is matched. A glob set matches every pattern at once, but for a
/// handful of rules that are nearly always a name, a prefix or `*`, comparing
/// strings in order costs a tenth of it (about 1,200 instructions per request
/// with a glob set, building its candidate and running its strategies).
#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcard: the whole name.
    Exact(String),
    /// A literal followed by `*`s only (empty: every name).
    Prefix(String),
    Glob(GlobMatcher),
}

impl Matcher {
    fn new(pattern: &str) -> Result<Matcher, (String, String)> {
        let literal = |text: &str| !text.contains(['*', '?', '[']);
        if literal(pattern) {
            return Ok(Matcher::Exact(pattern.to_owned()));
        }
        let stem = pattern.trim_end_matches('*');
        if literal(stem) {
            return Ok(Matcher::Prefix(stem.to_owned()));
        }
        Ok(Matcher::Glob(glob(pattern)?.compile_matcher()))
    }

    fn matches(&self, model: &str) -> bool {
        match self {
            Matcher::Exact(name) => model == name,
            Matcher::Prefix(stem) => model.starts_with(stem.as_str()),
            Matcher::Glob(glob) => glob.is_match(model),
        }
    }
}

impl Router {
    /// Compile `(pattern, "connection.model")` pairs in order. The config layer has
    /// already checked patterns and targets, so errors here are unexpected.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Router, (String, String)> {
        let mut rules = Vec::new();
        for (pattern, target) in routes {
            let (connection, model) = split_route_target(target);
            let model = match model {
                Some("*") => RouteModel::PassThrough,
                Some(name) => RouteModel::Fixed(name.to_owned()),
                None => RouteModel::ConnectionDefault,
            };
            rules.push(Rule {
                pattern: pattern.to_owned(),
                connection: connection.to_owned(),
                model,
            });
        }
        let matchers = rules
            .iter()
            .map(|rule| Matcher::new(&rule.pattern))
            .collect::<Result<_, _>>()?;
        Ok(Router { matchers, rules })
    }

    /// The first rule (in config order) whose pattern matches the whole model name.
    pub fn route(&self, model: &str) -> Option<&Rule> {
        self.route_index(model).map(|index| &self.rules[index])
    }

    /// The position of the rule [`Router::route`] picks.
    pub fn route_index(&self, model: &str) -> Option<usize> {
        self.matchers.iter().position(|m| m.matches(model))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// Compile patterns into one `GlobSet`; on failure returns `(pattern, problem)`.
pub fn compile_patterns<'a>(
    patterns: impl IntoIterator<Item = &'a str>,
) -> Result<GlobSet, (String, String)> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern)?);
    }
    builder.build().map_err(|e| {
        (
            String::new(),
            format!("cannot compile routing patterns: {e}"),
        )
    })
}

/// One fnmatch pattern as a glob; on failure `(pattern, problem)`.
fn glob(pattern: &str) -> Result<Glob, (String, String)> {
    GlobBuilder::new(&fnmatch_to_globset(pattern))
        .literal_separator(false)
        .backslash_escape(false)
        .case_insensitive(false)
        .build()
        .map_err(|e| {
            (
                pattern.to_owned(),
                format!("invalid model pattern: {}", e.kind()),
            )
        })
}

/// Rewrite an fnmatch pattern into globset syntax with the same meaning: braces
/// (globset alternation) become character classes so they match literally.
fn fnmatch_to_globset(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut in_class = false;
    let mut class_start = false;
    for ch in pattern.chars() {
        if in_class {
            out.push(ch);
            // `]` right after `[` or `[!` is a member, not the end (as in fnmatch).
            if ch == ']' && !class_start {
                in_class = false;
            }
            class_start = class_start && ch == '!';
            continue;
        }
        match ch {
            '[' => {
                in_class = true;
                class_start = true;
                out.push(ch);
            }
            '{' | '}' => {
                out.push('[');
                out.push(ch);
                out.push(']');
            }
            _ => out.push(ch),
        }
    }
    out
}

/// Whether a pattern has glob syntax (used by `model_listing_mode = "ignore_wildcards"`,
/// which, like the reference, looks at `*` and `?`).
pub fn has_wildcards(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(routes.iter().copied()).unwrap()
    }

    #[test]
    fn first_rule_in_order_wins() {
        let r = router(&[("gpt-4*", "a.gpt-4"), ("gpt*", "b.*"), ("*", "c.default")]);
        assert_eq!(r.route("gpt-4o").unwrap().connection, "a");
        assert_eq!(r.route("gpt-3.5").unwrap().connection, "b");
        assert_eq!(r.route("claude").unwrap().connection, "c");
        assert_eq!(
            r.route("gpt-4o").unwrap().model,
            RouteModel::Fixed("gpt-4".into())
        );
        assert_eq!(r.route("gpt-3.5").unwrap().model, RouteModel::PassThrough);
    }

    #[test]
    fn fnmatch_semantics() {
        let r = router(&[
            ("model-?", "q.*"),
            ("[ab]-x", "cls.*"),
            ("[!ab]-y", "neg.*"),
            ("org/*", "slash.*"),
            ("{lit}", "brace.*"),
            ("Exact", "exact.*"),
        ]);
        assert_eq!(r.route("model-1").unwrap().connection, "q");
        assert!(r.route("model-12").is_none(), "? is one character");
        assert_eq!(r.route("a-x").unwrap().connection, "cls");
        assert!(r.route("c-x").is_none());
        assert_eq!(r.route("c-y").unwrap().connection, "neg");
        assert!(r.route("a-y").is_none());
        assert_eq!(
            r.route("org/team/model").unwrap().connection,
            "slash",
            "* crosses /"
        );
        assert_eq!(r.route("{lit}").unwrap().connection, "brace");
        assert!(r.route("lit").is_none());
        assert!(r.route("exact").is_none(), "case-sensitive");
        assert!(r.route("Exact2").is_none(), "whole name");
    }

    /// The string comparisons answer as the compiled glob set does, whatever the
    /// pattern and name.
    #[test]
    fn matching_by_comparison_agrees_with_the_glob_set() {
        let patterns = [
            "*", "**", "", "gpt", "gpt*", "gpt-4**", "g?t*", "*gpt", "gp*t", "[gc]*", "{g}*",
            "a\\b*", "claude-*", "é*", "x]*", "org/*", "a**b",
        ];
        let names = [
            "",
            "gpt",
            "gpt-4o",
            "gpt*",
            "gp",
            "claude-3",
            "claude-",
            "cgpt",
            "{g}x",
            "a\\bc",
            "é",
            "éa",
            "x]y",
            "org/team/m",
            "a/c/b",
            "g\nt",
            "GPT",
        ];
        for pattern in patterns {
            let router = Router::new([(pattern, "c.*")]).unwrap();
            let set = compile_patterns([pattern]).unwrap();
            for name in names {
                assert_eq!(
                    router.route_index(name).is_some(),
                    set.is_match(name),
                    "{pattern:?} on {name:?}"
                );
            }
        }
    }

    #[test]
    fn double_star_and_bad_patterns() {
        let r = router(&[("a**b", "x.*")]);
        assert!(r.route("a/c/b").is_some());
        assert!(compile_patterns(["[abc"]).is_err());
    }
}
