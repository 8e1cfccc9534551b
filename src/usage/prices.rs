//! Prices per model: the built-in table (`data/prices.toml`, embedded) after the
//! config's `[pricing]` globs. The first matching pattern wins: the config's in the
//! order written, then the built-in table's in file order (it lists the more
//! specific patterns first). The upstream model name is looked up first, then the
//! model the client asked for.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use globset::{Glob, GlobSet, GlobSetBuilder};
use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::ConfigError;

/// The built-in price list (USD per million tokens).
const BUILT_IN: &str = include_str!("../../data/prices.toml");

/// One price entry: USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    // Lenient: `env:` substitution yields strings.
    #[serde(deserialize_with = "crate::config::lenient::f64")]
    pub input: f64,
    #[serde(deserialize_with = "crate::config::lenient::f64")]
    pub output: f64,
    /// Prompt tokens read from the provider's cache; `input` when absent.
    #[serde(default, deserialize_with = "crate::config::lenient::opt_f64")]
    pub cached_input: Option<f64>,
}

/// Token counts of one request, as the ledger records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Part of `prompt` read from the provider's cache.
    pub cached: u64,
}

impl PriceConfig {
    /// USD for these tokens.
    pub fn cost(&self, tokens: Tokens) -> f64 {
        let cached = tokens.cached.min(tokens.prompt);
        let fresh = tokens.prompt - cached;
        let cached_price = self.cached_input.unwrap_or(self.input);
        (fresh as f64 * self.input
            + cached as f64 * cached_price
            + tokens.completion as f64 * self.output)
            / 1_000_000.0
    }

    fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if ok(self.input) && ok(self.output) && self.cached_input.is_none_or(ok) {
            Ok(())
        } else {
            Err("prices must be non-negative numbers (USD per million tokens)".into())
        }
    }
}

/// The compiled price list.
pub struct Prices {
    /// Tells the tables apart in each thread's cache of lookups ([`FOUND`]): a
    /// reload makes a new table.
    id: u64,
    patterns: GlobSet,
    prices: Vec<PriceConfig>,
    /// Models already warned about (one warning per model and process run).
    warned: Mutex<HashSet<String>>,
}

impl Prices {
    /// The config's `[pricing]` before the built-in table. The config was checked
    /// at load ([`Prices::check`]), so its patterns compile.
    pub fn new(pricing: &IndexMap<String, PriceConfig>) -> Prices {
        let mut builder = GlobSetBuilder::new();
        let mut prices = Vec::new();
        for (pattern, price) in pricing.iter().chain(built_in().iter()) {
            if let Ok(glob) = Glob::new(pattern) {
                builder.add(glob);
                prices.push(*price);
            }
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Prices {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            patterns: builder.build().unwrap_or_else(|_| GlobSet::empty()),
            prices,
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// `[pricing]` at config load: every pattern compiles, every price is a
    /// non-negative number.
    pub fn check(pricing: &IndexMap<String, PriceConfig>, file: &Path) -> Result<(), ConfigError> {
        for (pattern, price) in pricing {
            let key = format!("pricing.\"{pattern}\"");
            Glob::new(pattern).map_err(|e| ConfigError::new(file, &key, e.to_string()))?;
            price.check().map_err(|e| ConfigError::new(file, &key, e))?;
        }
        Ok(())
    }

    /// The price of the first pattern matching one of `models` (in order).
    pub fn find(&self, models: &[&str]) -> Option<PriceConfig> {
        models
            .iter()
            .filter(|m| !m.is_empty())
            .find_map(|model| self.find_one(model))
    }

    /// The first pattern's price that matches `model`. Matching the glob set costs
    /// about 1,000 instructions; a request's model is nearly always one seen
    /// before, so each thread remembers its answers (no lock: one cache per
    /// serving thread).
    fn find_one(&self, model: &str) -> Option<PriceConfig> {
        let look_up = || {
            let first = self.patterns.matches(model).into_iter().min()?;
            Some(self.prices[first])
        };
        // A client names any model it likes: long names are not kept.
        if model.len() > MAX_CACHED_NAME {
            return look_up();
        }
        FOUND.with(|found| {
            let mut found = found.borrow_mut();
            let (table, answers) = &mut *found;
            if *table != self.id {
                *table = self.id;
                answers.clear();
            }
            if let Some(price) = answers.get(model) {
                return *price;
            }
            let price = look_up();
            if answers.len() >= MAX_CACHED_MODELS {
                answers.clear();
            }
            answers.insert(model.into(), price);
            price
        })
    }

    /// The cost of a request: 0, with one warning per model, when no price is known.
    pub fn cost(&self, models: &[&str], tokens: Tokens) -> f64 {
        if let Some(price) = self.find(models) {
            return price.cost(tokens);
        }
        if tokens == Tokens::default() {
            return 0.0;
        }
        let name = models.iter().find(|m| !m.is_empty()).copied().unwrap_or("");
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < 10_000 && warned.insert(name.to_owned()) {
            tracing::warn!(
                model = name,
                "no price for this model: its usage is recorded with cost 0 (add it under [pricing])"
            );
        }
        0.0
    }
}

/// The built-in table, parsed (it is part of the source: a broken file fails the
/// unit tests, and is treated as empty rather than stopping a server).
/// Per thread: the answers of [`Prices::find_one`] for the table with this id.
type Answers = (u64, hashbrown::HashMap<Box<str>, Option<PriceConfig>>);

thread_local! {
    static FOUND: RefCell<Answers> = RefCell::new((0, hashbrown::HashMap::new()));
}

/// Bounds of each thread's [`FOUND`]: at most this many names (then it starts
/// over), each at most this long.
const MAX_CACHED_MODELS: usize = 512;
const MAX_CACHED_NAME: usize = 128;

fn built_in() -> IndexMap<String, PriceConfig> {
    toml::from_str(BUILT_IN).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_parses_and_every_entry_is_reachable() {
        let table: IndexMap<String, PriceConfig> = toml::from_str(BUILT_IN).unwrap();
        assert!(table.len() > 30, "{}", table.len());
        let prices = Prices::new(&IndexMap::new());
        for (pattern, price) in &table {
            price.check().unwrap();
            // The pattern's own literal name must get its own price, not that of an
            // earlier, broader pattern.
            let name = pattern.trim_end_matches('*');
            assert_eq!(prices.find(&[name]), Some(*price), "{pattern}");
        }
        for model in [
            "gpt-4o",
            "claude-sonnet-4-5",
            "gemini-2.5-flash",
            "gpt-4o-mini-2024-07-18",
        ] {
            assert!(prices.find(&[model]).is_some(), "{model}");
        }
    }

    #[test]
    fn each_table_answers_for_itself_on_one_thread() {
        let price = |input: f64| PriceConfig {
            input,
            output: input,
            cached_input: None,
        };
        let table = |input: f64| {
            let mut pricing = IndexMap::new();
            pricing.insert("team-*".to_owned(), price(input));
            Prices::new(&pricing)
        };
        let (old, new) = (table(1.0), table(2.0));
        // Asked in turns on this thread: a cached answer of one table never comes
        // back from the other (a reload makes a new table).
        for _ in 0..3 {
            assert_eq!(old.find(&["team-model"]), Some(price(1.0)));
            assert_eq!(new.find(&["team-model"]), Some(price(2.0)));
            assert_eq!(new.find(&["other"]), None);
        }
        // Names past the cache's bounds are still matched.
        let long = format!("team-{}", "x".repeat(MAX_CACHED_NAME));
        assert_eq!(new.find(&[&long]), Some(price(2.0)));
        for i in 0..MAX_CACHED_MODELS + 10 {
            assert_eq!(old.find(&[&format!("team-{i}")]), Some(price(1.0)));
        }
        assert_eq!(old.find(&["team-model"]), Some(price(1.0)));
    }

    #[test]
    fn config_patterns_come_first_in_their_order_and_costs_add_up() {
        let mut pricing = IndexMap::new();
        let own = PriceConfig {
            input: 1.0,
            output: 2.0,
            cached_input: Some(0.5),
        };
        let broad = PriceConfig {
            input: 9.0,
            output: 9.0,
            cached_input: None,
        };
        pricing.insert("gpt-4o-mini".to_owned(), own);
        pricing.insert("gpt-4o*".to_owned(), broad);
        pricing.insert("my-*".to_owned(), broad);
        let prices = Prices::new(&pricing);
        assert_eq!(prices.find(&["gpt-4o-mini"]), Some(own));
        assert_eq!(prices.find(&["gpt-4o-2024-08-06"]), Some(broad));
        // Not overridden: the built-in price.
        assert_eq!(
            prices.find(&["claude-3-5-haiku-latest"]).unwrap().input,
            0.80
        );
        // The upstream model first, then the requested one.
        assert_eq!(prices.find(&["unknown", "my-model"]), Some(broad));
        let tokens = Tokens {
            prompt: 1_000_000,
            completion: 500_000,
            cached: 200_000,
        };
        // 800k fresh at 1.0 + 200k cached at 0.5 + 500k out at 2.0
        assert!((own.cost(tokens) - (0.8 + 0.1 + 1.0)).abs() < 1e-9);
        assert_eq!(prices.cost(&["nothing-known"], tokens), 0.0);
    }

    #[test]
    fn bad_pricing_entries_name_the_key() {
        let mut pricing = IndexMap::new();
        pricing.insert(
            "gpt[".to_owned(),
            PriceConfig {
                input: 1.0,
                output: 1.0,
                cached_input: None,
            },
        );
        let err = Prices::check(&pricing, Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("pricing.\"gpt[\""), "{err}");
        let mut pricing = IndexMap::new();
        pricing.insert(
            "m".to_owned(),
            PriceConfig {
                input: -1.0,
                output: 1.0,
                cached_input: None,
            },
        );
        let err = Prices::check(&pricing, Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("non-negative"), "{err}");
    }
}
