//! The ClickHouse schema, owned by the sink: versioned migrations, and the one place where the DDL
//! differs between server generations.
//!
//! Two servers must work: 18.16 (what Debian ships, used by the tests) and modern ClickHouse (22+,
//! 23.8+ in production). The column set is chosen so that the RowBinary bytes the sink writes are
//! the same on both; only the DDL differs, and only where the encoding is identical:
//! `IPv6` vs `FixedString(16)` (the same 16 bytes, network order), `LowCardinality(String)` vs
//! `String` (the same bytes), and `TTL`/`CODEC` clauses only where the server has them.
//!
//! Migrations are recorded in `<prefix>schema_migrations`; applying them again is a no-op, and
//! every statement is `IF NOT EXISTS`, so two sinks starting at once cannot break each other.
//!
//! On a replicated cluster (`clickhouse.cluster`) the same migrations run `ON CLUSTER`: rows are
//! stored in `ReplicatedReplacingMergeTree` tables named `<prefix>hits_local` and
//! `<prefix>bad_hits_local`, and `<prefix>hits` and `<prefix>bad_hits` become `Distributed` tables
//! over them, so inserts and analysts' queries use the same names in both modes. The `Distributed`
//! tables shard by a hash of what the `ReplacingMergeTree` folds on (`event_id`; a bad message's
//! Kafka coordinates), so copies of one row always meet on one shard and are folded there.

use clickhouse::Client;

use crate::config::ClickHouseConfig;
use crate::error::{Error, Result};

/// Which DDL a server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// ClickHouse 18.x: no IPv6 type, LowCardinality experimental, no TTL, no codecs, no
    /// `insert_deduplication_token`.
    Legacy,
    /// ClickHouse 22 and later.
    Modern,
}

impl Flavour {
    /// The flavour for a `version()` string such as `18.16.1` or `23.8.2.7`.
    pub fn from_version(version: &str) -> Result<Flavour> {
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        match major {
            18 => Ok(Flavour::Legacy),
            22.. => Ok(Flavour::Modern),
            _ => Err(Error::UnsupportedServer(version.to_owned())),
        }
    }

    /// Asks the server.
    pub async fn detect(client: &Client) -> Result<Flavour> {
        let version: String = client.query("SELECT version()").fetch_one().await?;
        Flavour::from_version(&version)
    }

    fn low_cardinality(self) -> &'static str {
        match self {
            Flavour::Legacy => "String",
            Flavour::Modern => "LowCardinality(String)",
        }
    }

    fn ip(self) -> &'static str {
        match self {
            Flavour::Legacy => "FixedString(16)",
            Flavour::Modern => "IPv6",
        }
    }

    fn codec(self, codec: &str) -> String {
        match self {
            Flavour::Legacy => String::new(),
            Flavour::Modern => format!(" CODEC({codec})"),
        }
    }
}

/// `database.table` as its two parts. Every table name [`Tables`] gives is qualified.
pub fn db_and_name(table: &str) -> (&str, &str) {
    table.split_once('.').expect("tables are database.name")
}

/// Names of the sink's tables for one configuration, and where their DDL runs.
#[derive(Debug, Clone)]
pub struct Tables {
    /// `database.prefix`, the start of every table name.
    qualified_prefix: String,
    /// `clickhouse.cluster`, when the tables are replicated.
    cluster: Option<String>,
}

impl Tables {
    /// From the configured database, prefix and cluster (each validated as an identifier).
    pub fn new(c: &ClickHouseConfig) -> Tables {
        Tables {
            qualified_prefix: format!("{}.{}", c.database, c.table_prefix),
            cluster: (!c.cluster.is_empty()).then(|| c.cluster.clone()),
        }
    }

    /// `db.<prefix>hits`: where hits are inserted and queried (`Distributed` on a cluster).
    pub fn hits(&self) -> String {
        format!("{}hits", self.qualified_prefix)
    }

    /// `db.<prefix>bad_hits`: the same for bad messages.
    pub fn bad_hits(&self) -> String {
        format!("{}bad_hits", self.qualified_prefix)
    }

    /// The table that stores `table`'s rows: `table` itself on one server, `table_local` on a
    /// cluster (where `table` is the `Distributed` table over it).
    pub fn storage(&self, table: &str) -> String {
        match self.cluster {
            None => table.to_owned(),
            Some(_) => format!("{table}_local"),
        }
    }

    /// ` ON CLUSTER <name>` on a cluster, else empty: follows the table name in every DDL
    /// statement, so each server of the cluster runs it (ClickHouse runs an `ALTER` of a
    /// replicated table once per shard).
    pub fn on_cluster(&self) -> String {
        match &self.cluster {
            None => String::new(),
            Some(cluster) => format!(" ON CLUSTER {cluster}"),
        }
    }

    /// The engine of a storage table `database.name`: `ReplacingMergeTree()`, or on a cluster its
    /// replicated form, with the conventional ZooKeeper path and the servers' `{shard}` and
    /// `{replica}` macros.
    fn engine(&self, storage: &str) -> String {
        match self.cluster {
            None => "ReplacingMergeTree()".into(),
            Some(_) => {
                let path = storage.replace('.', "/");
                format!("ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{path}', '{{replica}}')")
            }
        }
    }

    /// On a cluster, the `Distributed` table `table` (`hits()` or `bad_hits()`) over its storage
    /// table; nothing on one server. Sharded by what the storage table folds duplicates on.
    fn distributed(&self, table: &str) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let sharding_key = if table == self.hits() {
            "cityHash64(event_id)"
        } else {
            "cityHash64(kafka_topic, kafka_partition, kafka_offset)"
        };
        let storage = self.storage(table);
        let (db, name) = db_and_name(&storage);
        Some(format!(
            "CREATE TABLE IF NOT EXISTS {table}{on} AS {storage}
ENGINE = Distributed({cluster}, {db}, {name}, {sharding_key})",
            on = self.on_cluster()
        ))
    }

    /// `db.<prefix>schema_migrations`.
    pub fn migrations(&self) -> String {
        format!("{}schema_migrations", self.qualified_prefix)
    }
}

/// One step of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A statement that is idempotent by itself (`CREATE ... IF NOT EXISTS`).
    Sql(String),
    /// `ALTER TABLE table ADD COLUMN column definition`, skipped when the column exists: 18.16
    /// has no `ADD COLUMN IF NOT EXISTS`, and two sinks may migrate at once.
    AddColumn {
        /// `database.table`.
        table: String,
        /// Column name.
        column: &'static str,
        /// Type and default.
        definition: String,
        /// When set, the same statement makes this the table's sorting key (`MODIFY ORDER BY`),
        /// which ClickHouse allows only for columns added in that statement, without a default
        /// expression (18.16 and modern servers alike).
        order_by: Option<&'static str>,
        /// [`Tables::on_cluster`].
        on_cluster: String,
    },
}

impl Step {
    /// The statement this step runs (for `AddColumn`, when the column is missing).
    pub fn sql(&self) -> String {
        match self {
            Step::Sql(sql) => sql.clone(),
            Step::AddColumn {
                table,
                column,
                definition,
                order_by: None,
                on_cluster,
            } => format!("ALTER TABLE {table}{on_cluster} ADD COLUMN {column} {definition}"),
            Step::AddColumn {
                table,
                column,
                definition,
                order_by: Some(key),
                on_cluster,
            } => format!(
                "ALTER TABLE {table}{on_cluster} ADD COLUMN {column} {definition}, MODIFY ORDER BY ({key})"
            ),
        }
    }
}

/// One schema change.
pub struct Migration {
    /// Applied in ascending order; never reused.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// Its steps for a server flavour and retention.
    pub steps: fn(&Tables, Flavour, u32) -> Vec<Step>,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "hits and bad_hits",
        steps: |t, f, r| v1(t, f, r).into_iter().map(Step::Sql).collect(),
    },
    Migration {
        version: 2,
        name: "privacy columns",
        steps: v2,
    },
    Migration {
        version: 3,
        name: "geo columns",
        steps: v3,
    },
    Migration {
        version: 4,
        name: "visitor id",
        steps: |t, _, _| vec![add_hits_column(t, "visitor_id", "String DEFAULT ''")],
    },
    Migration {
        version: 5,
        name: "user agent, traffic class and signatures",
        steps: v5,
    },
    Migration {
        version: 6,
        name: "kafka_index: a hit's place in a packed message",
        steps: v6,
    },
];

/// A message may pack several hits, so `(partition, offset)` no longer names one hit: both tables
/// get its place in the message, and `bad_hits` (whose replacing key is its sorting key) sorts by
/// it, or two bad hits of one message would be folded into one row.
fn v6(t: &Tables, f: Flavour, _retention_days: u32) -> Vec<Step> {
    let mut sorting = add_column(
        t,
        &t.bad_hits(),
        "kafka_index",
        "UInt32",
        Some("kafka_topic, kafka_partition, kafka_offset, kafka_index"),
    );
    if let (Flavour::Legacy, Step::AddColumn { on_cluster, .. }) = (f, &mut sorting) {
        // 18.16 refuses `MODIFY ORDER BY` in an `ON CLUSTER` query ("Unsupported type of ALTER
        // query"), but replicates it to the shard's other replicas when sent to one of them.
        // So on 18.16 it reaches the shard of the server the sink talks to; a cluster of several
        // shards needs it sent to one server of each (docs/operations-sink.md).
        on_cluster.clear();
    }
    vec![
        add_hits_column(t, "kafka_index", "UInt32 DEFAULT 0"),
        sorting,
    ]
}

/// `ALTER TABLE <prefix>hits ADD COLUMN`, skipped when it exists.
fn add_hits_column(t: &Tables, column: &'static str, definition: &str) -> Step {
    add_column(t, &t.hits(), column, definition, None)
}

/// Adds a column to the table storing `table`'s rows (with the sorting key, if any); on a
/// cluster, [`steps`] then rebuilds the `Distributed` table over it.
fn add_column(
    t: &Tables,
    table: &str,
    column: &'static str,
    definition: &str,
    order_by: Option<&'static str>,
) -> Step {
    Step::AddColumn {
        table: t.storage(table),
        column,
        definition: definition.to_owned(),
        order_by,
        on_cluster: t.on_cluster(),
    }
}

/// A migration's steps for these tables, a server flavour and a retention. On a cluster, each
/// `Distributed` table whose storage table gained columns is dropped and created again over it
/// at the end: it must declare the same columns, and ClickHouse refuses an `ALTER ... ON CLUSTER`
/// of a table that is not replicated in a cluster whose shards are (`internal_replication`;
/// seen on 18.16). It holds no rows of its own, since the sink inserts synchronously; an insert
/// or query in that moment fails and is retried.
pub fn steps(m: &Migration, t: &Tables, flavour: Flavour, retention_days: u32) -> Vec<Step> {
    let mut steps = (m.steps)(t, flavour, retention_days);
    if t.cluster.is_some() {
        for table in [t.hits(), t.bad_hits()] {
            let storage = t.storage(&table);
            let altered = steps
                .iter()
                .any(|s| matches!(s, Step::AddColumn { table, .. } if *table == storage));
            if let (true, Some(create)) = (altered, t.distributed(&table)) {
                steps.push(Step::Sql(format!(
                    "DROP TABLE IF EXISTS {table}{}",
                    t.on_cluster()
                )));
                steps.push(Step::Sql(create));
            }
        }
    }
    steps
}

fn v5(t: &Tables, f: Flavour, _retention_days: u32) -> Vec<Step> {
    let lc = format!("{} DEFAULT ''", f.low_cardinality());
    let column = |column, definition: &str| add_hits_column(t, column, definition);
    vec![
        column("prefetch", "UInt8 DEFAULT 0"),
        column("browser", &lc),
        column("browser_version", &lc),
        column("os", &lc),
        column("os_version", &lc),
        column("device_type", &lc),
        column("traffic_class", &lc),
        column("class_reason", &lc),
        column("signature", &lc),
        column("sent_at", "DateTime('UTC') DEFAULT 0"),
        column("unverified", "UInt8 DEFAULT 0"),
    ]
}

fn v3(t: &Tables, f: Flavour, _retention_days: u32) -> Vec<Step> {
    let lc = format!("{} DEFAULT ''", f.low_cardinality());
    let column = |column, definition: &str| add_hits_column(t, column, definition);
    vec![
        column("geo_country", &lc),
        column("geo_region", &lc),
        column("geo_city", &lc),
        column("asn", "UInt32 DEFAULT 0"),
        column("as_org", &lc),
    ]
}

fn v2(t: &Tables, _f: Flavour, _retention_days: u32) -> Vec<Step> {
    vec![
        add_hits_column(t, "ip_hash", "String DEFAULT ''"),
        add_hits_column(t, "anonymized", "UInt8 DEFAULT 0"),
    ]
}

fn v1(t: &Tables, f: Flavour, retention_days: u32) -> Vec<String> {
    let lc = f.low_cardinality();
    let ttl = match (f, retention_days) {
        (Flavour::Modern, days) if days > 0 => format!("\nTTL received_at + toIntervalDay({days})"),
        _ => String::new(),
    };
    let dedup = match (f, &t.cluster) {
        // Lets `insert_deduplication_token` drop a retried batch the server already has.
        // Replicated tables deduplicate inserted blocks without being asked (in ZooKeeper).
        (Flavour::Modern, None) => "\nSETTINGS non_replicated_deduplication_window = 1000",
        _ => "",
    };
    let hits = format!(
        "CREATE TABLE IF NOT EXISTS {table}{on} (
    event_id UUID,
    received_at DateTime('UTC'){delta},
    schema_version UInt16,
    edge_id {lc},
    transport {lc},
    kind {lc},
    site_id {lc},
    client_ip {ip},
    user_agent String{zstd},
    referer String{zstd},
    accept_language {lc},
    dnt {lc},
    sec_gpc {lc},
    host {lc},
    path {lc},
    head_request UInt8,
    url String{zstd},
    page_referrer String{zstd},
    title String{zstd},
    user_id String,
    campaign {lc},
    source {lc},
    medium {lc},
    content String,
    term String,
    variant {lc},
    message_id String,
    value Nullable(Float64),
    currency {lc},
    prop_keys Array(String),
    prop_values Array(String),
    cut_fields UInt16,
    kafka_partition Int32,
    kafka_offset Int64,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = {engine}
PARTITION BY toYYYYMM(received_at)
ORDER BY (site_id, kind, toDate(received_at), event_id){ttl}{dedup}",
        table = t.storage(&t.hits()),
        on = t.on_cluster(),
        engine = t.engine(&t.storage(&t.hits())),
        ip = f.ip(),
        delta = f.codec("Delta, ZSTD(1)"),
        zstd = f.codec("ZSTD(1)"),
    );
    let bad_hits = format!(
        "CREATE TABLE IF NOT EXISTS {table}{on} (
    kafka_topic String,
    kafka_partition Int32,
    kafka_offset Int64,
    reason {lc},
    error String,
    payload String,
    seen_at DateTime('UTC') DEFAULT now()
)
ENGINE = {engine}
ORDER BY (kafka_topic, kafka_partition, kafka_offset){dedup}",
        table = t.storage(&t.bad_hits()),
        on = t.on_cluster(),
        engine = t.engine(&t.storage(&t.bad_hits())),
    );
    [
        Some(hits),
        t.distributed(&t.hits()),
        Some(bad_hits),
        t.distributed(&t.bad_hits()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The table recording applied migrations. On a cluster, replicated like the tables it
/// describes, so every replica reads the same record whichever one a sink talks to.
pub fn migrations_table(t: &Tables) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table}{on} (version UInt32, name String, applied_at DateTime('UTC') DEFAULT now())
ENGINE = {engine} ORDER BY version",
        table = t.migrations(),
        on = t.on_cluster(),
        engine = t.engine(&t.migrations()),
    )
}

/// The sink's tables on the servers `client` reaches through `source` (`system.tables`, or a
/// `remote(...)` over it): (server, table name, engine), sorted.
async fn engines(
    client: &Client,
    source: &str,
    t: &Tables,
) -> Result<Vec<(String, String, String)>> {
    let hits = t.hits();
    let (db, _) = db_and_name(&hits);
    let names = [t.hits(), t.bad_hits(), t.migrations()]
        .iter()
        .map(|q| format!("'{}'", db_and_name(q).1))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(client
        .query(&format!(
            "SELECT hostName(), name, engine FROM {source} WHERE database = '{db}' AND name IN ({names}) ORDER BY 1, 2"
        ))
        .fetch_all()
        .await?)
}

/// `text` as a ClickHouse string literal: quoted, with `\\` and `'` escaped.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// On a cluster, refuses tables of the single-server layout under the sink's names: migrating
/// would drop (`Distributed` rebuilds) or bypass them.
fn check_layout(t: &Tables, cluster: &str, found: &[(String, String, String)]) -> Result<()> {
    let name = |q: String| db_and_name(&q).1.to_owned();
    let (hits, bad_hits, migrations) = (name(t.hits()), name(t.bad_hits()), name(t.migrations()));
    for (host, table, engine) in found {
        let wrong = if *table == hits || *table == bad_hits {
            engine != "Distributed"
        } else {
            *table == migrations && !engine.starts_with("Replicated")
        };
        if wrong {
            return Err(Error::NotAClusterLayout {
                cluster: cluster.to_owned(),
                problem: format!("{table} on {host} is a {engine} table, not the cluster layout's"),
            });
        }
    }
    Ok(())
}

/// Whether this server already has the cluster layout and every migration, so that a start needs
/// no `ON CLUSTER` statement (each waits for every server, so one server down would stop sinks
/// from starting).
async fn cluster_current(
    client: &Client,
    t: &Tables,
    local: &[(String, String, String)],
) -> Result<bool> {
    if local.len() < 3 {
        return Ok(false);
    }
    let applied: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {} ORDER BY version",
            t.migrations()
        ))
        .fetch_all()
        .await?;
    Ok(MIGRATIONS.iter().all(|m| applied.contains(&m.version)))
}

/// Creates the database and migrations table if needed, then applies every migration not yet
/// recorded. Returns the versions it applied (empty when the schema was current).
///
/// On a cluster (`clickhouse.cluster`): the server the sink talks to is checked first, and when
/// it has the cluster layout and every migration nothing more is sent, so a sink starts while a
/// replica is down. Otherwise every server of the cluster must answer: each is checked for tables
/// of the single-server layout under the sink's names ([`Error::NotAClusterLayout`]), and the
/// statements run `ON CLUSTER`; the `Distributed` tables are created again at the end if a server
/// lacks them (a migration interrupted between its drop and its create).
pub async fn migrate(client: &Client, c: &ClickHouseConfig, flavour: Flavour) -> Result<Vec<u32>> {
    let tables = Tables::new(c);
    let mut client = client.clone();
    if let Some(cluster) = &tables.cluster {
        let local = engines(&client, "system.tables", &tables).await?;
        check_layout(&tables, cluster, &local)?;
        if cluster_current(&client, &tables, &local).await? {
            return Ok(Vec::new());
        }
        let hosts: Vec<(String, u16)> = client
            .query(&format!(
                "SELECT host_name, port FROM system.clusters WHERE cluster = '{cluster}'"
            ))
            .fetch_all()
            .await?;
        if hosts.is_empty() {
            return Err(Error::config(
                "clickhouse.cluster",
                format!(
                    "the server at {} has no cluster named {cluster} in its remote_servers",
                    c.url
                ),
            ));
        }
        // Comma-separated addresses are separate shards to `remote`, so every server answers.
        let addresses: Vec<String> = hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let every = format!(
            "remote('{}', system.tables, {}, {})",
            addresses.join(","),
            quoted(&c.user),
            quoted(&c.password)
        );
        check_layout(&tables, cluster, &engines(&client, &every, &tables).await?)?;
        if flavour == Flavour::Modern {
            // A replicated ALTER returns once one replica has it unless told to wait for all; the
            // Distributed tables rebuilt after it copy the columns of each server's own replica.
            // The old name: `alter_sync` is its alias only from 23.x, and 22.x is supported.
            client = client.with_setting("replication_alter_partitions_sync", "2");
        }
    }
    let client = &client;
    let on = tables.on_cluster();
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}{on}", c.database))
        .execute()
        .await?;
    client.query(&migrations_table(&tables)).execute().await?;
    let applied: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {} ORDER BY version",
            tables.migrations()
        ))
        .fetch_all()
        .await?;
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for step in steps(m, &tables, flavour, c.retention_days) {
            match &step {
                Step::Sql(sql) => client.query(sql).execute().await?,
                Step::AddColumn { table, column, .. } => {
                    let (db, name) = db_and_name(table);
                    let exists: u64 = client
                        .query(&format!(
                            "SELECT count() FROM system.columns WHERE database = '{db}' AND table = '{name}' AND name = '{column}'"
                        ))
                        .fetch_one()
                        .await?;
                    if exists == 0 {
                        client.query(&step.sql()).execute().await?;
                    }
                }
            }
        }
        // The name goes in as a literal: the `?` bind syntax is the client's, and names are ours.
        client
            .query(&format!(
                "INSERT INTO {} (version, name) VALUES ({}, '{}')",
                tables.migrations(),
                m.version,
                m.name.replace('\'', "")
            ))
            .execute()
            .await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        done.push(m.version);
    }
    for table in [tables.hits(), tables.bad_hits()] {
        if let Some(create) = tables.distributed(&table) {
            client.query(&create).execute().await?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_a_flavour() {
        assert_eq!(Flavour::from_version("18.16.1").unwrap(), Flavour::Legacy);
        assert_eq!(Flavour::from_version("23.8.2.7").unwrap(), Flavour::Modern);
        assert_eq!(Flavour::from_version("26.9.1").unwrap(), Flavour::Modern);
        assert!(Flavour::from_version("20.3.1").is_err());
        assert!(Flavour::from_version("nonsense").is_err());
    }

    #[test]
    fn ddl_differs_only_where_the_encoding_is_the_same() {
        let t = Tables::new(&ClickHouseConfig {
            table_prefix: "p_".into(),
            ..ClickHouseConfig::default()
        });
        let legacy = v1(&t, Flavour::Legacy, 30).join("\n");
        let modern = v1(&t, Flavour::Modern, 30).join("\n");
        assert!(legacy.contains("CREATE TABLE IF NOT EXISTS pixelpipe.p_hits"));
        assert!(legacy.contains("client_ip FixedString(16)") && modern.contains("client_ip IPv6"));
        assert!(
            !legacy.contains("LowCardinality") && modern.contains("kind LowCardinality(String)")
        );
        assert!(!legacy.contains("TTL") && modern.contains("TTL received_at + toIntervalDay(30)"));
        assert!(!legacy.contains("CODEC") && modern.contains("CODEC(ZSTD(1))"));
        assert!(
            !v1(&t, Flavour::Modern, 0).join("\n").contains("TTL"),
            "0 days keeps rows forever"
        );
        // Stripped of the flavour-specific parts, both declare the same columns in the same order.
        let columns = |ddl: &str| -> Vec<String> {
            ddl.lines()
                .filter(|l| l.starts_with("    "))
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(columns(&legacy), columns(&modern));
    }

    #[test]
    fn a_cluster_stores_in_replicated_tables_and_rebuilds_the_distributed_ones() {
        let single = Tables::new(&ClickHouseConfig::default());
        let cluster = Tables::new(&ClickHouseConfig {
            cluster: "c1".into(),
            ..ClickHouseConfig::default()
        });
        assert_eq!(single.storage(&single.hits()), "pixelpipe.hits");
        assert_eq!(cluster.storage(&cluster.hits()), "pixelpipe.hits_local");
        let sql = |t: &Tables, m: &Migration, f| -> Vec<String> {
            steps(m, t, f, 0).iter().map(Step::sql).collect()
        };
        let v1 = sql(&cluster, &MIGRATIONS[0], Flavour::Legacy).join("\n");
        assert!(v1.contains("CREATE TABLE IF NOT EXISTS pixelpipe.hits_local ON CLUSTER c1 ("));
        assert!(v1.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/pixelpipe/hits_local', '{replica}')"
        ));
        assert!(
            v1.contains("ENGINE = Distributed(c1, pixelpipe, hits_local, cityHash64(event_id))")
        );
        assert!(!sql(&single, &MIGRATIONS[0], Flavour::Legacy)
            .join("\n")
            .contains("ON CLUSTER"));
        // A migration adding columns ends by rebuilding each Distributed table it changed.
        let v2 = sql(&cluster, &MIGRATIONS[1], Flavour::Modern);
        assert_eq!(
            v2[v2.len() - 2..]
                .iter()
                .map(|s| s.lines().next().unwrap())
                .collect::<Vec<_>>(),
            [
                "DROP TABLE IF EXISTS pixelpipe.hits ON CLUSTER c1",
                "CREATE TABLE IF NOT EXISTS pixelpipe.hits ON CLUSTER c1 AS pixelpipe.hits_local"
            ]
        );
        assert!(v2[0].starts_with("ALTER TABLE pixelpipe.hits_local ON CLUSTER c1 ADD COLUMN"));
        assert_eq!(sql(&single, &MIGRATIONS[1], Flavour::Modern).len(), 2);
        // 18.16 refuses MODIFY ORDER BY on a cluster: that one statement goes to one server.
        let v6 = sql(&cluster, &MIGRATIONS[5], Flavour::Legacy);
        assert!(v6.contains(&"ALTER TABLE pixelpipe.bad_hits_local ADD COLUMN kafka_index UInt32, MODIFY ORDER BY (kafka_topic, kafka_partition, kafka_offset, kafka_index)".to_owned()), "{v6:#?}");
        assert_eq!(v6.iter().filter(|s| s.starts_with("DROP TABLE")).count(), 2);
        let v6_modern = sql(&cluster, &MIGRATIONS[5], Flavour::Modern);
        assert!(v6_modern.iter().all(|s| s.contains("ON CLUSTER c1")));
    }

    #[test]
    fn credentials_become_string_literals() {
        assert_eq!(quoted("default"), "'default'");
        assert_eq!(quoted(r"it's\x"), r"'it\'s\\x'");
    }
}
