//! Group budgets (`[groups.NAME] budget = { usd = 50, period = "month" }` or
//! `tokens = N`): checked before the upstream call by reserving an estimate, settled
//! on the real usage when the request ends (issue 17, point 4).
//!
//! Spend to date, with SQLite: the ledger's rows of the current period written
//! before this process started (summed once, when the database is first reached),
//! plus what this process has settled since (rows of this process all have
//! `created_at` at or after the start, so none is counted twice). With PostgreSQL:
//! the shared figures of `budget_usage` (every replica adds its rows' spend in the
//! transaction that inserts them; each writer reads the current periods' figures back
//! after each write, every `flush_interval_seconds`), plus what this process settled
//! and has not written yet. So replicas share one budget, each seeing the others'
//! spend about two flush intervals late. The request path never waits on the
//! database: the check is answered from memory.
//!
//! A request is admitted while spend + reservations is below the limit, and then
//! reserves the group's average request (a moving average of settled requests),
//! so a burst of concurrent requests against a nearly spent budget is cut off after
//! about the requests the rest can pay for; the overshoot is at most what the
//! admitted requests spend beyond their estimates, and never more than the
//! requests in flight. Reservations are per replica: replicas with requests in
//! flight at once may together overshoot by those requests, plus what the others
//! spent in their last flush intervals. A managed key's budget is kept the same
//! way under the name `key:<id>` ([`KEY_PREFIX`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::config::{lenient, ConfigError};
use crate::error::{ApiError, ErrorBody};

/// A group's `budget`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// USD per period (costs from the price table).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub usd: Option<f64>,
    /// Prompt + completion tokens per period.
    #[serde(default, deserialize_with = "opt_u64")]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub period: Period,
}

fn opt_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = lenient::f64(d)?;
    if v.fract() != 0.0 || v > u64::MAX as f64 {
        return Err(serde::de::Error::custom(
            "expected a whole number of tokens",
        ));
    }
    Ok(Some(v as u64))
}

/// When a budget starts again (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    /// Weeks start on Monday.
    Week,
    #[default]
    Month,
    /// Never.
    Total,
}

impl Period {
    /// The name in the config and in the database (`budget_usage.period`).
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// The name from [`Period::name`].
    pub fn from_name(name: &str) -> Option<Period> {
        PERIODS.into_iter().find(|p| p.name() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "today",
            Period::Week => "this week",
            Period::Month => "this month",
            Period::Total => "in total",
        }
    }

    /// The start of the period holding `now`, and the start of the next one (Unix
    /// milliseconds, UTC).
    /// The position in [`PERIODS`].
    fn index(self) -> usize {
        self as usize
    }

    pub fn bounds(self, now: i64) -> (i64, Option<i64>) {
        let today = now.div_euclid(DAY);
        match self {
            Period::Day => (today * DAY, Some((today + 1) * DAY)),
            Period::Week => {
                // 1970-01-01 was a Thursday: three days after a Monday.
                let monday = today - (today + 3).rem_euclid(7);
                (monday * DAY, Some((monday + 7) * DAY))
            }
            Period::Month => {
                let (year, month, _) = civil_from_days(today);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * DAY,
                    Some(days_from_civil(next_year, next_month, 1) * DAY),
                )
            }
            Period::Total => (0, None),
        }
    }
}

const DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2027-01-01T00:00:00Z`.
fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl BudgetConfig {
    /// One of `usd` and `tokens`, not negative.
    pub fn check(&self, file: &std::path::Path, key: &str) -> Result<(), ConfigError> {
        match (self.usd, self.tokens) {
            (Some(_), Some(_)) | (None, None) => Err(ConfigError::new(
                file,
                key,
                "needs one of `usd` or `tokens` (a budget counts one of them)",
            )),
            _ => Ok(()),
        }
    }

    fn limit(&self) -> f64 {
        self.usd.unwrap_or(self.tokens.unwrap_or(0) as f64)
    }

    fn unit(&self, amount: f64) -> String {
        if self.usd.is_some() {
            format!("${amount:.4}")
        } else {
            format!("{amount:.0} tokens")
        }
    }
}

/// What happens while the spend to date cannot be read (the database has not
/// answered since startup): `open` admits requests, counting only this process's
/// spend; `closed` refuses budgeted groups' requests with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnreachable {
    #[default]
    Open,
    Closed,
}

/// Spend of each group in the period of each kind: (period start, USD, tokens),
/// from the database's `budget_usage`. SQLite: read once, before this process
/// writes a row; PostgreSQL: every replica's written rows, read again about once
/// a second.
pub type Before = HashMap<(Period, String), (i64, f64, f64)>;

/// The budgets of one server.
pub struct Budgets {
    /// Unix milliseconds when this process started counting (rows before it come
    /// from the database, rows after it from memory).
    pub start_ms: i64,
    policy: WhenUnreachable,
    /// 0: not loaded yet; 1: loaded.
    loaded: AtomicU8,
    /// The spend not counted in `groups`: see [`Before`]. Per name, then per kind
    /// of period (in `PERIODS` order), so the request path looks it up by `&str`.
    base: Mutex<Base>,
    /// (foldhash: names come from the config and the admin API, and a lookup is
    /// on every budgeted request.)
    groups: Mutex<hashbrown::HashMap<String, Spend>>,
}

/// [`Before`] by name: (period start, USD, tokens) per kind of period.
type Base = hashbrown::HashMap<String, [Option<(i64, f64, f64)>; 4]>;

fn base_of(before: Before) -> Base {
    let mut base = Base::new();
    for ((period, name), figures) in before {
        base.entry(name).or_default()[period.index()] = Some(figures);
    }
    base
}

/// The budget name of a managed key (`usage::keys`): its id behind a prefix no
/// config group may start with, so keys and groups share one set of budgets, the
/// ledger's spend sums and PostgreSQL's shared figures (`budget_usage`).
pub const KEY_PREFIX: &str = "key:";

/// `key:<id>` → ("key", id); a group's name → ("group", name): for messages.
fn subject(name: &str) -> (&'static str, &str) {
    match name.strip_prefix(KEY_PREFIX) {
        Some(id) => ("key", id),
        None => ("group", name),
    }
}

pub const PERIODS: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

/// One group's running figures. What this process settled is kept for every kind
/// of period at once, so that a reload that changes the budget's period or unit
/// keeps counting what was spent since the start.
#[derive(Debug, Default)]
struct Spend {
    /// Per kind of period (in `PERIODS` order): what this process settled in
    /// the current one.
    settled: [Figures; 4],
    /// Reserved by requests in flight: USD, tokens.
    reserved: (f64, f64),
    /// Moving average of a settled request (USD, tokens): what the next one
    /// reserves.
    average: (f64, f64),
    settled_requests: u64,
}

/// USD and tokens settled in the period from `start` (inclusive) to `end`
/// (exclusive; `i64::MAX` for `total`), Unix ms.
#[derive(Debug, Clone, Copy)]
struct Figures {
    start: i64,
    end: i64,
    usd: f64,
    tokens: f64,
}

impl Default for Figures {
    /// No period yet: the first use works out the current one.
    fn default() -> Figures {
        Figures {
            start: i64::MAX,
            end: i64::MIN,
            usd: 0.0,
            tokens: 0.0,
        }
    }
}

impl Spend {
    /// The figures of `period` now (a new period starts at 0). The calendar is
    /// worked out only when `now` leaves the period the figures belong to.
    fn settled(&mut self, period: Period, now: i64) -> &mut Figures {
        let figures = &mut self.settled[period.index()];
        if !(figures.start <= now && now < figures.end) {
            let (start, end) = period.bounds(now);
            *figures = Figures {
                start,
                end: end.unwrap_or(i64::MAX),
                usd: 0.0,
                tokens: 0.0,
            };
        }
        figures
    }
}

impl Budgets {
    pub fn new(policy: WhenUnreachable) -> Budgets {
        Budgets {
            start_ms: now_ms(),
            policy,
            loaded: AtomicU8::new(0),
            base: Mutex::new(Base::new()),
            groups: Mutex::new(hashbrown::HashMap::new()),
        }
    }

    /// SQLite: the figures written before this process, read once.
    pub fn loaded(&self, before: Before) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = base_of(before);
        self.loaded.store(1, Ordering::Release);
    }

    /// PostgreSQL: the shared figures, read after this process's rows whose spend
    /// is in `written` (per group: USD, tokens) were inserted. That spend is now in
    /// the figures, so it leaves this process's own count; what is still
    /// unwritten stays there. Logged at debug level when the figures change.
    pub fn refreshed(&self, figures: Before, written: &HashMap<String, (f64, f64)>) {
        let now = now_ms();
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for (group, &(usd, tokens)) in written {
            if let Some(spend) = groups.get_mut(group) {
                for period in PERIODS {
                    let figures = spend.settled(period, now);
                    figures.usd = (figures.usd - usd).max(0.0);
                    figures.tokens = (figures.tokens - tokens).max(0.0);
                }
            }
        }
        let figures = base_of(figures);
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        if *base != figures && tracing::enabled!(tracing::Level::DEBUG) {
            let mut list: Vec<String> = figures
                .iter()
                .flat_map(|(group, periods)| {
                    PERIODS
                        .iter()
                        .zip(periods)
                        .filter_map(move |(period, found)| {
                            let (_, usd, tokens) = (*found)?;
                            Some(format!("{group} {period:?} usd={usd:.6} tokens={tokens}"))
                        })
                })
                .collect();
            list.sort();
            tracing::debug!("usage ledger: shared budget figures: {}", list.join(", "));
        }
        *base = figures;
        drop(base);
        drop(groups);
        self.loaded.store(1, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire) == 1
    }

    /// Before the upstream call: admit (with a reservation) or refuse.
    pub fn reserve(
        self: &Arc<Self>,
        group: &str,
        budget: &BudgetConfig,
    ) -> Result<Option<Hold>, ApiError> {
        let now = now_ms();
        let loaded = self.is_loaded();
        if !loaded && self.policy == WhenUnreachable::Closed {
            return Err(ApiError::Custom(Box::new(
                ErrorBody::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "The budget of {} '{}' cannot be checked: the usage database \
                         has not been reached yet (budgets fail closed).",
                        subject(group).0,
                        subject(group).1
                    ),
                    "server_error",
                )
                .code(Some("budget_unavailable".into())),
            )));
        }
        // The group's figures are locked before the base is read, as `refreshed`
        // does: a refresh moves spend from one to the other, and a check between
        // its two halves would miss it.
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        // The name is copied only the first time it is seen.
        let spend = groups.entry_ref(group).or_default();
        let usd = budget.usd.is_some();
        let Figures {
            start,
            usd: settled_usd,
            tokens: settled_tokens,
            ..
        } = *spend.settled(budget.period, now);
        // Figures of an earlier period count for nothing now.
        let before = if loaded {
            let base = self.base.lock().unwrap_or_else(|e| e.into_inner());
            let (_, usd_before, tokens_before) = base
                .get(group)
                .and_then(|periods| periods[budget.period.index()])
                .filter(|(period_start, _, _)| *period_start == start)
                .unwrap_or_default();
            if usd {
                usd_before
            } else {
                tokens_before
            }
        } else {
            0.0
        };
        let limit = budget.limit();
        let (used, reserved) = if usd {
            (before + settled_usd, spend.reserved.0)
        } else {
            (before + settled_tokens, spend.reserved.1)
        };
        if used + reserved >= limit {
            let next = budget.period.bounds(now).1;
            let resets = match next {
                Some(next) => format!("it resets at {}", rfc3339(next)),
                None => "it does not reset (period \"total\")".to_owned(),
            };
            let mut body = ErrorBody::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "The budget of {} '{}' is exhausted: {} of {} used {}; {resets}.",
                    subject(group).0,
                    subject(group).1,
                    budget.unit(used),
                    budget.unit(limit),
                    budget.period.as_str(),
                ),
                "insufficient_quota",
            )
            .code(Some("budget_exceeded".into()));
            if let Some(next) = next {
                let seconds = ((next - now) / 1000).max(1);
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    body = body.header(HeaderName::from_static("retry-after"), value);
                }
            }
            return Err(ApiError::Custom(Box::new(body)));
        }
        let estimate = spend.average;
        spend.reserved.0 += estimate.0;
        spend.reserved.1 += estimate.1;
        Ok(Some(Hold {
            budgets: self.clone(),
            group: group.to_owned(),
            estimate,
            settled: false,
            then: None,
        }))
    }
}

/// A request's reservation; settled with its real usage when it ends, released if
/// it is dropped unsettled.
pub struct Hold {
    budgets: Arc<Budgets>,
    group: String,
    /// USD, tokens.
    estimate: (f64, f64),
    settled: bool,
    /// Another budget the same request holds (a managed key's, next to its
    /// group's): settled or released with this one.
    then: Option<Box<Hold>>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("group", &self.group)
            .field("estimate", &self.estimate)
            .finish()
    }
}

impl Hold {
    /// The request's real spend: `cost` USD, `tokens` prompt + completion.
    pub fn settle(mut self, cost: f64, tokens: u64) {
        self.finish(Some((cost, tokens as f64)));
        if let Some(then) = self.then.take() {
            then.settle(cost, tokens);
        }
    }

    /// One hold for two budgets (`a`'s and then `b`'s), so that the request's
    /// single settlement reaches both; either may be absent.
    pub fn join(a: Option<Hold>, b: Option<Hold>) -> Option<Hold> {
        match (a, b) {
            (Some(mut a), b) => {
                // `a` holds at most one other budget: a group's and a key's.
                debug_assert!(a.then.is_none());
                a.then = b.map(Box::new);
                Some(a)
            }
            (None, b) => b,
        }
    }

    fn finish(&mut self, actual: Option<(f64, f64)>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = now_ms();
        let mut groups = self
            .budgets
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(spend) = groups.get_mut(&self.group) else {
            return;
        };
        spend.reserved.0 = (spend.reserved.0 - self.estimate.0).max(0.0);
        spend.reserved.1 = (spend.reserved.1 - self.estimate.1).max(0.0);
        let Some((usd, tokens)) = actual else {
            return;
        };
        for period in PERIODS {
            let figures = spend.settled(period, now);
            figures.usd += usd;
            figures.tokens += tokens;
        }
        // Failed requests (no usage) do not pull the estimate down.
        if usd > 0.0 || tokens > 0.0 {
            spend.settled_requests += 1;
            let weight = 1.0 / (spend.settled_requests.min(20) as f64);
            spend.average.0 += (usd - spend.average.0) * weight;
            spend.average.1 += (tokens - spend.average.1) * weight;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        humantime::parse_rfc3339(text)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn a_periods_index_is_its_place_in_periods() {
        for (place, period) in PERIODS.into_iter().enumerate() {
            assert_eq!(period.index(), place, "{period:?}");
        }
    }

    #[test]
    fn periods_in_utc() {
        let now = at("2026-12-31T23:59:59Z");
        assert_eq!(
            Period::Month.bounds(now),
            (at("2026-12-01T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            Period::Month.bounds(at("2028-02-29T12:00:00Z")),
            (at("2028-02-01T00:00:00Z"), Some(at("2028-03-01T00:00:00Z")))
        );
        assert_eq!(
            Period::Day.bounds(now),
            (at("2026-12-31T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        // 2026-12-31 is a Thursday.
        assert_eq!(
            Period::Week.bounds(now),
            (at("2026-12-28T00:00:00Z"), Some(at("2027-01-04T00:00:00Z")))
        );
        assert_eq!(Period::Total.bounds(now), (0, None));
        assert_eq!(rfc3339(at("2027-01-01T00:00:00Z")), "2027-01-01T00:00:00Z");
        for days in [-1000, 0, 59, 365 * 30 + 7, 20_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn reserve_then_settle_stops_at_the_limit() {
        let budgets = Arc::new(Budgets::new(WhenUnreachable::Open));
        budgets.loaded(HashMap::new());
        let budget = BudgetConfig {
            usd: None,
            tokens: Some(3000),
            period: Period::Month,
        };
        for _ in 0..3 {
            budgets
                .reserve("g", &budget)
                .unwrap()
                .unwrap()
                .settle(0.0, 1200);
        }
        let err = budgets.reserve("g", &budget).unwrap_err();
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        let object = err.error_object();
        assert_eq!(object["code"], "budget_exceeded");
        assert_eq!(object["type"], "insufficient_quota");
        let message = object["message"].as_str().unwrap();
        assert!(message.contains("group 'g'"), "{message}");
        assert!(
            message.contains("3600 tokens of 3000 tokens used this month"),
            "{message}"
        );
        assert!(message.contains("resets at"), "{message}");
        // Reservations count: with 1200 average, a budget 1600 short admits two.
        let budget = BudgetConfig {
            tokens: Some(3600 + 1600),
            ..budget
        };
        let holds: Vec<_> = (0..50)
            .filter_map(|_| budgets.reserve("g", &budget).ok().flatten())
            .collect();
        assert_eq!(holds.len(), 2);
        drop(holds);
        // Released unsettled: the budget is as it was.
        assert!(budgets.reserve("g", &budget).is_ok());
        // A reload that makes it a daily budget keeps what was spent today.
        let daily = BudgetConfig {
            tokens: Some(3000),
            period: Period::Day,
            ..budget
        };
        let err = budgets.reserve("g", &daily).unwrap_err();
        assert!(err.error_object()["message"]
            .as_str()
            .unwrap()
            .contains("3600 tokens of 3000 tokens used today"));
    }

    #[test]
    fn a_keys_budget_names_the_key() {
        let budgets = Arc::new(Budgets::new(WhenUnreachable::Open));
        budgets.loaded(HashMap::new());
        let budget = BudgetConfig {
            usd: Some(0.01),
            tokens: None,
            period: Period::Total,
        };
        let key = budgets.reserve("key:key_0a1b", &budget).unwrap();
        let group = budgets.reserve("team", &budget).unwrap();
        // One settlement reaches both budgets.
        Hold::join(group, key).unwrap().settle(0.02, 10);
        for (name, says) in [("key:key_0a1b", "key 'key_0a1b'"), ("team", "group 'team'")] {
            let err = budgets.reserve(name, &budget).unwrap_err();
            let message = err.error_object()["message"].as_str().unwrap().to_owned();
            assert!(message.contains(says), "{message}");
            assert!(message.contains("does not reset"), "{message}");
        }
    }

    #[test]
    fn closed_refuses_until_loaded() {
        let budgets = Arc::new(Budgets::new(WhenUnreachable::Closed));
        let budget = BudgetConfig {
            usd: Some(1.0),
            tokens: None,
            period: Period::Day,
        };
        let err = budgets.reserve("g", &budget).unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        let mut before = HashMap::new();
        let today = Period::Day.bounds(now_ms()).0;
        before.insert((Period::Day, "g".to_owned()), (today, 0.5, 0.0));
        budgets.loaded(before);
        budgets
            .reserve("g", &budget)
            .unwrap()
            .unwrap()
            .settle(0.6, 0);
        let err = budgets.reserve("g", &budget).unwrap_err();
        assert!(err.error_object()["message"]
            .as_str()
            .unwrap()
            .contains("$1.1000 of $1.0000 used today"));
    }
}
