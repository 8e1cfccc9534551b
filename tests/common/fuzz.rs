//! What the fuzz targets (`tests/fuzz_*.rs`) share: arbitrary JSON, "mostly right,
//! sometimes junk" values, and the runner (a fixed set of cases in CI, new random
//! ones for a long run asked for with `PROPTEST_CASES`, and a check that enough
//! cases got through to the code under test).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

/// Cases per run when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 192;

/// Any JSON value, a few levels deep; strings are often one of `words` (the ones
/// the parsers under test look for), keys look like field names.
pub fn arb_json(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let word = prop::sample::select(words).prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![word, "\\PC{0,12}"].prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z_$]{1,10}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// `good` `good_weight` times in `good_weight + 1`, otherwise [`arb_json`].
pub fn sometimes_junk<S: Strategy<Value = Value> + 'static>(
    good: S,
    good_weight: u32,
    words: &'static [&'static str],
) -> BoxedStrategy<Value> {
    prop_oneof![good_weight => good, 1 => arb_json(words)].boxed()
}

/// Run `check` on the cases of `strategy`: the same cases on every default run,
/// `PROPTEST_CASES` new random ones when set. Panics with the smallest failing case;
/// then asserts that at least a tenth of the cases counted themselves in `passed`
/// (got through to the code under test), so a generator that drifts off cannot
/// pass quietly.
pub fn run<S: Strategy>(
    strategy: &S,
    passed: &AtomicUsize,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let long_run: Option<u32> = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    let cases = long_run.unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = match long_run {
        Some(_) => TestRunner::new(config),
        None => TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha)),
    };
    if let Err(failure) = runner.run(strategy, check) {
        panic!("{failure}");
    }
    let passed = passed.load(Ordering::Relaxed);
    eprintln!("{passed} of {cases} cases got through");
    assert!(
        passed * 10 >= cases as usize,
        "only {passed} of {cases} cases got through: the generator is too far off"
    );
}
