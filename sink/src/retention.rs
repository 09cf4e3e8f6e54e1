//! How long each table keeps its rows, and the two ways that is enforced: a table TTL on servers
//! that have one, brought in line with the configuration at every start, and an explicit delete
//! (`pixelpipe-sink retention`) for ClickHouse 18.16, which has no TTL, run from a timer.
//!
//! It owns the per-table rule ([`rules`]) and the statements; `schema` owns the tables themselves.

use clickhouse::Client;

use crate::config::ClickHouseConfig;
use crate::error::Result;
use crate::schema::{Flavour, Tables};

/// One table's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `database.table`.
    pub table: String,
    /// The `DateTime` column whose age counts.
    pub column: &'static str,
    /// Days a row is kept; 0 keeps rows forever.
    pub days: u32,
}

impl Rule {
    /// The TTL expression as the server prints it back in `SHOW CREATE TABLE`.
    pub fn ttl(&self) -> String {
        format!("{} + toIntervalDay({})", self.column, self.days)
    }

    /// Deletes the rows past retention. A mutation: the server applies it in the background, part
    /// by part, and the statement returns once it is queued.
    pub fn delete_statement(&self) -> String {
        format!(
            "ALTER TABLE {} DELETE WHERE {} < now() - toIntervalDay({})",
            self.table, self.column, self.days
        )
    }
}

/// The retention of every table the sink writes.
pub fn rules(c: &ClickHouseConfig) -> Vec<Rule> {
    let t = Tables::new(c);
    vec![
        Rule {
            table: t.hits(),
            column: "received_at",
            days: c.retention_days,
        },
        Rule {
            table: t.bad_hits(),
            column: "seen_at",
            days: c.bad_hits_retention_days,
        },
    ]
}

/// On a modern server, sets or removes each table's TTL where it differs from the configuration;
/// on 18.16 does nothing (see [`delete_expired`]). Returns the tables it changed.
///
/// Comparing first matters: `MODIFY TTL` re-checks every part of the table, which is not a cost to
/// pay at every start.
pub async fn sync_ttl(
    client: &Client,
    c: &ClickHouseConfig,
    flavour: Flavour,
) -> Result<Vec<String>> {
    if flavour == Flavour::Legacy {
        return Ok(Vec::new());
    }
    let mut changed = Vec::new();
    for rule in rules(c) {
        let (db, name) = rule
            .table
            .split_once('.')
            .expect("tables are database.name");
        let create: String = client
            .query(&format!(
                "SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = '{name}'"
            ))
            .fetch_one()
            .await?;
        let has_ttl = create.contains(" TTL ");
        let sql = match rule.days {
            0 if has_ttl => format!("ALTER TABLE {} REMOVE TTL", rule.table),
            0 => continue,
            _ if create.contains(&format!("TTL {}", rule.ttl())) => continue,
            _ => format!("ALTER TABLE {} MODIFY TTL {}", rule.table, rule.ttl()),
        };
        client.query(&sql).execute().await?;
        tracing::info!(table = %rule.table, days = rule.days, "table TTL brought in line with the configuration");
        changed.push(rule.table);
    }
    Ok(changed)
}

/// Queues the deletion of every row past its table's retention; returns the statements sent.
/// Works on every server; modern ones do the same by themselves through the TTL.
pub async fn delete_expired(client: &Client, c: &ClickHouseConfig) -> Result<Vec<String>> {
    let mut sent = Vec::new();
    for rule in rules(c).into_iter().filter(|r| r.days > 0) {
        let sql = rule.delete_statement();
        client.query(&sql).execute().await?;
        tracing::info!(table = %rule.table, days = rule.days, "queued deletion of expired rows");
        sent.push(sql);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_has_its_own_rule() {
        let c = ClickHouseConfig {
            table_prefix: "t_".into(),
            retention_days: 90,
            bad_hits_retention_days: 7,
            ..ClickHouseConfig::default()
        };
        let r = rules(&c);
        assert_eq!(r[0].ttl(), "received_at + toIntervalDay(90)");
        assert_eq!(
            r[1].delete_statement(),
            "ALTER TABLE pixelpipe.t_bad_hits DELETE WHERE seen_at < now() - toIntervalDay(7)"
        );
    }
}
