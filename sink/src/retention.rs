//! How long each table keeps its rows, and the two ways that is enforced: a table TTL on servers
//! that have one, brought in line with the configuration when the sink migrates, and an explicit
//! clean-up (`pixelpipe-sink retention`) for ClickHouse 18.16, which has no TTL, run from a timer.
//!
//! It owns the per-table rule ([`rules`]) and the statements; `schema` owns the tables themselves.

use clickhouse::Client;

use crate::config::ClickHouseConfig;
use crate::error::Result;
use crate::schema::{db_and_name, Flavour, Tables};

/// One table's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `database.table`: the table that stores the rows (on a cluster, the replicated table
    /// under the `Distributed` one).
    pub table: String,
    /// [`Tables::on_cluster`]: every statement runs on each shard.
    pub on_cluster: String,
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

    /// Sets the table's TTL to this rule (modern servers).
    pub fn modify_ttl_statement(&self) -> String {
        format!(
            "ALTER TABLE {}{} MODIFY TTL {}",
            self.table,
            self.on_cluster,
            self.ttl()
        )
    }

    /// Removes the table's TTL, for a retention of 0 days (modern servers).
    pub fn remove_ttl_statement(&self) -> String {
        format!("ALTER TABLE {}{} REMOVE TTL", self.table, self.on_cluster)
    }

    /// Deletes the rows past retention. A mutation: the server applies it in the background, part
    /// by part, and the statement returns once it is queued. Used for `bad_hits` (see
    /// [`delete_expired`]).
    pub fn delete_statement(&self) -> String {
        format!(
            "ALTER TABLE {}{} DELETE WHERE {} < now() - toIntervalDay({})",
            self.table, self.on_cluster, self.column, self.days
        )
    }
}

/// The retention of every table the sink writes: `hits`, `bad_hits`, then the hourly and daily
/// rollups.
pub fn rules(c: &ClickHouseConfig) -> Vec<Rule> {
    let t = Tables::new(c);
    let [hourly, daily] = t.rollups();
    vec![
        Rule {
            table: t.storage(&t.hits()),
            on_cluster: t.on_cluster(),
            column: "received_at",
            days: c.retention_days,
        },
        Rule {
            table: t.storage(&t.bad_hits()),
            on_cluster: t.on_cluster(),
            column: "seen_at",
            days: c.bad_hits_retention_days,
        },
        Rule {
            table: t.storage(&hourly.table),
            on_cluster: t.on_cluster(),
            column: hourly.period,
            days: c.hits_hourly_retention_days,
        },
        Rule {
            table: t.storage(&daily.table),
            on_cluster: t.on_cluster(),
            column: daily.period,
            days: c.hits_daily_retention_days,
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
        let (db, name) = db_and_name(&rule.table);
        let create: String = client
            .query(&format!(
                "SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = '{name}'"
            ))
            .fetch_one()
            .await?;
        let has_ttl = create.contains(" TTL ");
        let sql = match rule.days {
            0 if has_ttl => rule.remove_ttl_statement(),
            0 => continue,
            _ if create.contains(&format!("TTL {}", rule.ttl())) => continue,
            _ => rule.modify_ttl_statement(),
        };
        client.query(&sql).execute().await?;
        tracing::info!(table = %rule.table, days = rule.days, "table TTL brought in line with the configuration");
        changed.push(rule.table);
    }
    Ok(changed)
}

/// On 18.16, removes what is past each table's retention and returns the statements sent; on a
/// modern server does nothing, because the TTL does it.
///
/// 18.16 has no `IN PARTITION` for mutations, so a `DELETE` rewrites every part of the table: too
/// heavy to run nightly on `hits`. `hits` and the rollups are partitioned by month, so whole
/// months that lie entirely before the cut-off are dropped instead (`DROP PARTITION` only unlinks
/// files); rows are then kept up to a month longer than their retention. `bad_hits` is small and
/// unpartitioned: its old rows are deleted exactly, and only when there are any.
pub async fn delete_expired(
    client: &Client,
    c: &ClickHouseConfig,
    flavour: Flavour,
) -> Result<Vec<String>> {
    if flavour == Flavour::Modern {
        tracing::info!("modern server: the table TTLs delete old rows; nothing to do");
        return Ok(Vec::new());
    }
    let mut sent = Vec::new();
    let [hits, bad_hits, hourly, daily] = <[Rule; 4]>::try_from(rules(c)).expect("four tables");
    for monthly in [hits, hourly, daily] {
        if monthly.days == 0 {
            continue;
        }
        let (db, name) = db_and_name(&monthly.table);
        let months: Vec<String> = client
            .query(&format!(
                "SELECT DISTINCT partition FROM system.parts
                 WHERE database = '{db}' AND table = '{name}' AND active
                   AND toUInt32(partition) < toYYYYMM(now() - toIntervalDay({}))
                 ORDER BY partition",
                monthly.days
            ))
            .fetch_all()
            .await?;
        for month in months {
            // Partition ids are toYYYYMM numbers read from the server itself.
            let sql = format!(
                "ALTER TABLE {}{} DROP PARTITION {month}",
                monthly.table, monthly.on_cluster
            );
            client.query(&sql).execute().await?;
            sent.push(sql);
        }
    }
    if bad_hits.days > 0 {
        // Through the table the sink writes (`Distributed` on a cluster), so every shard's rows
        // are counted, not only those of the server the sink talks to.
        let old: u64 = client
            .query(&format!(
                "SELECT count() FROM {} WHERE {} < now() - toIntervalDay({})",
                Tables::new(c).bad_hits(),
                bad_hits.column,
                bad_hits.days
            ))
            .fetch_one()
            .await?;
        if old > 0 {
            let sql = bad_hits.delete_statement();
            client.query(&sql).execute().await?;
            sent.push(sql);
        }
    }
    for sql in &sent {
        tracing::info!(%sql, "retention");
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
            (r[2].table.as_str(), r[2].ttl()),
            (
                "pixelpipe.t_hits_hourly",
                "hour + toIntervalDay(400)".into()
            )
        );
        assert_eq!(
            (r[3].table.as_str(), r[3].ttl()),
            ("pixelpipe.t_hits_daily", "day + toIntervalDay(1830)".into())
        );
        assert_eq!(
            r[1].delete_statement(),
            "ALTER TABLE pixelpipe.t_bad_hits DELETE WHERE seen_at < now() - toIntervalDay(7)"
        );
    }
}
