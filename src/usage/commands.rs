//! The command line's managed keys and usage reports (issue 17, point 7):
//! `lm-proxy-server keys create|list|revoke` and `lm-proxy-server usage`, straight
//! against the configured database (the one `--config` names), for operators
//! without HTTP tooling. Output is a plain table with aligned columns; errors are
//! one line on stderr and exit status 1.

use clap::{Args, Subcommand};

use super::budget::{BudgetConfig, Period};
use super::keys::{self, GroupBy, KeyError, NewKey};
use crate::config::Config;

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Managed keys: create, list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Requests, tokens and cost from the usage ledger, grouped.
    Usage(UsageArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make a key; it is printed once (only its digest is stored).
    Create(CreateArgs),
    /// Every key with its spend to date (no secrets).
    List,
    /// Revoke a key by id: every gateway refuses it within a few seconds.
    Revoke {
        /// The key's id (`key_...`).
        id: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The group the key belongs to (one of the config's groups).
    #[arg(long)]
    pub group: String,
    /// A name for people (shown in lists, logs and the ledger).
    #[arg(long)]
    pub name: String,
    /// Budget in USD per period.
    #[arg(long, value_name = "USD", conflicts_with = "budget_tokens")]
    pub budget_usd: Option<f64>,
    /// Budget in tokens (prompt + completion) per period.
    #[arg(long, value_name = "TOKENS")]
    pub budget_tokens: Option<u64>,
    /// The budget's period (UTC).
    #[arg(long, value_enum, default_value = "month")]
    pub period: PeriodArg,
    /// Expiry: a date (2027-01-01), an RFC 3339 time, or a duration from now (30d).
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// Free-form JSON object kept with the key.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PeriodArg {
    Day,
    Week,
    Month,
    Total,
}

impl From<PeriodArg> for Period {
    fn from(p: PeriodArg) -> Period {
        match p {
            PeriodArg::Day => Period::Day,
            PeriodArg::Week => Period::Week,
            PeriodArg::Month => Period::Month,
            PeriodArg::Total => Period::Total,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// From this date or time (UTC), included. Default: the ledger's start.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Up to this date or time (UTC), excluded. Default: now.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// How lines are grouped.
    #[arg(long, value_enum, default_value = "group")]
    pub by: GroupBy,
}

/// Run one command; the exit status.
pub async fn run(command: Command, config: &Config) -> u8 {
    match run_inner(command, config).await {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("lm-proxy-server: {e}");
            1
        }
    }
}

async fn run_inner(command: Command, config: &Config) -> Result<String, KeyError> {
    // Arguments first: a mistake is reported without touching the database.
    let (since, until) = match &command {
        Command::Usage(args) => {
            let time = |t: &Option<String>, default: i64, name: &str| match t {
                Some(t) => {
                    keys::parse_time(t).map_err(|e| KeyError::Invalid(format!("--{name}: {e}")))
                }
                None => Ok(default),
            };
            (
                time(&args.since, 0, "since")?,
                time(&args.until, keys::now_ms() + 1, "until")?,
            )
        }
        _ => (0, 0),
    };
    let new = match &command {
        Command::Keys(KeysCommand::Create(args)) => {
            let metadata =
                match &args.metadata {
                    Some(text) => match serde_json::from_str(text) {
                        Ok(serde_json::Value::Object(map)) => Some(map),
                        _ => return Err(KeyError::Invalid(
                            "--metadata must be a JSON object, such as '{\"team\": \"search\"}'"
                                .into(),
                        )),
                    },
                    None => None,
                };
            let budget =
                (args.budget_usd.is_some() || args.budget_tokens.is_some()).then(|| BudgetConfig {
                    usd: args.budget_usd,
                    tokens: args.budget_tokens,
                    period: args.period.into(),
                });
            let new = NewKey {
                group: args.group.clone(),
                name: args.name.clone(),
                budget,
                expires_at: args.expires.clone(),
                metadata,
            };
            keys::validate(&new, config, keys::now_ms())?;
            Some(new)
        }
        _ => None,
    };
    let db = keys::connect(config).await?;
    let out = match command {
        Command::Keys(KeysCommand::Create(_)) => {
            let new = new.expect("made above");
            let (record, key) = keys::create(&db, config, &new).await?;
            tracing::info!(
                "command line: created managed key {} (name {:?}, group '{}')",
                record.id,
                record.name,
                record.group
            );
            let mut out = table(
                &["ID", "NAME", "GROUP", "EXPIRES", "BUDGET"],
                vec![vec![
                    record.id.clone(),
                    record.name.clone(),
                    record.group.clone(),
                    record
                        .expires_at
                        .map(keys::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    budget_text(record.budget.as_ref()),
                ]],
            );
            out.push_str(&format!(
                "\nkey: {key}\nStore it now: it is not shown again (only its digest is kept).\n"
            ));
            out
        }
        Command::Keys(KeysCommand::List) => {
            let now = keys::now_ms();
            let rows = keys::list(&db)
                .await?
                .into_iter()
                .map(|(r, spend)| {
                    vec![
                        r.id.clone(),
                        r.name.clone(),
                        r.group.clone(),
                        r.status(now).to_owned(),
                        keys::rfc3339(r.created_at),
                        r.expires_at
                            .map(keys::rfc3339)
                            .unwrap_or_else(|| "-".into()),
                        budget_text(r.budget.as_ref()),
                        spend.requests.to_string(),
                        spend.tokens.to_string(),
                        format!("{:.6}", spend.cost_usd),
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "NAME", "GROUP", "STATUS", "CREATED", "EXPIRES", "BUDGET", "REQUESTS",
                    "TOKENS", "COST_USD",
                ],
                rows,
            )
        }
        Command::Keys(KeysCommand::Revoke { id }) => {
            let record = keys::revoke(&db, &id).await?;
            tracing::info!(
                "command line: revoked managed key {} (name {:?}, group '{}')",
                record.id,
                record.name,
                record.group
            );
            format!(
                "revoked {} ({}, group {}); gateways refuse it within {} s\n",
                record.id,
                record.name,
                record.group,
                keys::REFRESH.as_secs() + 1
            )
        }
        Command::Usage(args) => {
            let lines = keys::usage(&db, args.by, since, until).await?;
            let mut header = vec![args.by.as_str().to_ascii_uppercase()];
            if args.by == GroupBy::Key {
                header.push("KEY_NAME".into());
            }
            header.extend(
                [
                    "REQUESTS",
                    "ERRORS",
                    "PROMPT",
                    "COMPLETION",
                    "CACHED",
                    "COST_USD",
                ]
                .map(String::from),
            );
            let mut rows = Vec::new();
            let mut total = (0i64, 0i64, 0i64, 0i64, 0i64, 0f64);
            for l in &lines {
                let mut row = vec![if l.value.is_empty() {
                    "-".to_owned()
                } else {
                    l.value.clone()
                }];
                if args.by == GroupBy::Key {
                    row.push(l.key_name.clone().unwrap_or_else(|| "-".into()));
                }
                row.extend([
                    l.requests.to_string(),
                    l.errors.to_string(),
                    l.prompt_tokens.to_string(),
                    l.completion_tokens.to_string(),
                    l.cached_tokens.to_string(),
                    format!("{:.6}", l.cost_usd),
                ]);
                rows.push(row);
                total.0 += l.requests;
                total.1 += l.errors;
                total.2 += l.prompt_tokens;
                total.3 += l.completion_tokens;
                total.4 += l.cached_tokens;
                total.5 += l.cost_usd;
            }
            let mut row = vec!["TOTAL".to_owned()];
            if args.by == GroupBy::Key {
                row.push(String::new());
            }
            row.extend([
                total.0.to_string(),
                total.1.to_string(),
                total.2.to_string(),
                total.3.to_string(),
                total.4.to_string(),
                format!("{:.6}", total.5),
            ]);
            rows.push(row);
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            format!(
                "usage from {} to {}\n{}",
                keys::rfc3339(since),
                keys::rfc3339(until),
                table(&header, rows)
            )
        }
    };
    db.close().await;
    Ok(out)
}

fn budget_text(budget: Option<&BudgetConfig>) -> String {
    match budget {
        None => "-".into(),
        Some(b) => {
            let period = keys::budget_json(b)["period"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            match (b.usd, b.tokens) {
                (Some(usd), _) => format!("${usd}/{period}"),
                (_, Some(tokens)) => format!("{tokens} tokens/{period}"),
                _ => "-".into(),
            }
        }
    }
}

/// Columns padded to their widest cell, two spaces apart; numbers are not
/// right-aligned, so that a column reads the same in every terminal and in `cut`.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["ID", "NAME"],
            vec![
                vec!["key_1".into(), "a".into()],
                vec!["k".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "ID     NAME\nkey_1  a\nk      bb\n");
    }
}
