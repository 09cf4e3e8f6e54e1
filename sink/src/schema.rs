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
//!
//! Two rollups, `<prefix>hits_hourly` and `<prefix>hits_daily` ([`Rollup`]), are filled by
//! materialized views on the table storing hits. They count hits and visitors as distinct
//! counts (`uniqState`), never as sums, because the sink writes at least once: a batch written
//! again after a crash passes through the views again, and a distinct count absorbs the copy
//! where `countState()` would count it twice.

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
        self.engine_of("ReplacingMergeTree", storage)
    }

    /// [`Tables::engine`] for another `MergeTree` family (`AggregatingMergeTree`).
    fn engine_of(&self, family: &str, storage: &str) -> String {
        match self.cluster {
            None => format!("{family}()"),
            Some(_) => {
                let path = storage.replace('.', "/");
                format!("Replicated{family}('/clickhouse/tables/{{shard}}/{path}', '{{replica}}')")
            }
        }
    }

    /// `db.<prefix>hits_hourly` and `db.<prefix>hits_daily`: the rollups of hits.
    pub fn rollups(&self) -> [Rollup; 2] {
        [
            Rollup {
                table: format!("{}hits_hourly", self.qualified_prefix),
                period: "hour",
                period_type: "DateTime('UTC')",
                period_of_received_at: "toStartOfHour(received_at)",
                dimensions: &["campaign", "variant", "traffic_class"],
            },
            Rollup {
                table: format!("{}hits_daily", self.qualified_prefix),
                period: "day",
                period_type: "Date",
                period_of_received_at: "toDate(received_at)",
                dimensions: &[
                    "campaign",
                    "variant",
                    "traffic_class",
                    "geo_country",
                    "device_type",
                ],
            },
        ]
    }

    /// Every table that is `Distributed` on a cluster, over a storage table of its own.
    fn distributed_tables(&self) -> Vec<String> {
        let mut tables = vec![self.hits(), self.bad_hits()];
        tables.extend(self.rollups().map(|r| r.table));
        tables
    }

    /// On a cluster, the `Distributed` table `table` (`hits()`, `bad_hits()` or a rollup) over
    /// its storage table; nothing on one server. Sharded by what the storage table folds
    /// duplicates on; a rollup's rows are partial states merged when queried, so any shard will
    /// do (and only a backfill inserts through it: the views write to the storage tables).
    fn distributed(&self, table: &str) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let sharding_key = if table == self.hits() {
            "cityHash64(event_id)"
        } else if table == self.bad_hits() {
            "cityHash64(kafka_topic, kafka_partition, kafka_offset)"
        } else {
            "rand()"
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

/// A rollup of hits: per period (`hour` or `day`), site, kind and a few dimensions, the hits and
/// the visitors as distinct-count states. A materialized view, `<table>_mv`, fills it from every
/// block inserted into the table storing hits; a backfill from the hits already stored
/// (migration 7) fills its past.
///
/// Analysts read it with `uniqMerge(hits)` and `uniqIfMerge(visitors)`. Both are `uniq`:
/// exact up to 65 536 distinct values per state (it keeps every 32-bit hash until then), an
/// adaptive sample beyond. Being distinct counts they are idempotent: the same hit added twice
/// (a batch written again, a view and a backfill both seeing it) counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// `db.<prefix>hits_hourly`: where analysts query it (`Distributed` on a cluster).
    pub table: String,
    /// The period column: `hour` or `day`.
    pub period: &'static str,
    period_type: &'static str,
    period_of_received_at: &'static str,
    /// The columns it is grouped by besides `site_id`, `kind` and the period.
    pub dimensions: &'static [&'static str],
}

impl Rollup {
    /// `db.<prefix>hits_hourly_mv`: the view feeding the rollup's storage table (the same name
    /// on one server and on a cluster).
    pub fn view(&self) -> String {
        format!("{}_mv", self.table)
    }

    /// The sorting key, which is also what `AggregatingMergeTree` merges rows on.
    fn key(&self) -> String {
        let mut key = vec!["site_id", "kind", self.period];
        key.extend(self.dimensions);
        key.join(", ")
    }

    /// The aggregation from `source` (a table of hits), restricted by `filter` when given: the
    /// view's query, and a backfill's.
    pub fn select(&self, source: &str, filter: Option<&str>) -> String {
        let mut columns = vec![format!("{} AS {}", self.period_of_received_at, self.period)];
        columns.extend(["site_id", "kind"].iter().map(|c| (*c).to_owned()));
        columns.extend(self.dimensions.iter().map(|c| (*c).to_owned()));
        columns.push("uniqState(event_id) AS hits".into());
        // Anonymised hits carry no visitor id; an empty one is nobody, not one more visitor.
        columns.push("uniqIfState(visitor_id, visitor_id != '') AS visitors".into());
        let filter = filter.map(|f| format!("\nWHERE {f}")).unwrap_or_default();
        format!(
            "SELECT\n    {}\nFROM {source}{filter}\nGROUP BY {}",
            columns.join(",\n    "),
            self.key()
        )
    }

    /// The storage table, in the column order of [`Rollup::select`].
    fn create(&self, t: &Tables, f: Flavour) -> String {
        let storage = t.storage(&self.table);
        let lc = f.low_cardinality();
        let mut columns = vec![
            format!("{} {}", self.period, self.period_type),
            format!("site_id {lc}"),
            format!("kind {lc}"),
        ];
        columns.extend(self.dimensions.iter().map(|d| format!("{d} {lc}")));
        columns.push("hits AggregateFunction(uniq, UUID)".into());
        columns.push("visitors AggregateFunction(uniqIf, String, UInt8)".into());
        format!(
            "CREATE TABLE IF NOT EXISTS {storage}{on} (\n    {columns}\n)\nENGINE = {engine}\nPARTITION BY toYYYYMM({period})\nORDER BY ({key})",
            on = t.on_cluster(),
            columns = columns.join(",\n    "),
            engine = t.engine_of("AggregatingMergeTree", &storage),
            period = self.period,
            key = self.key(),
        )
    }

    /// The view, attached to the table storing hits (the replicated one on a cluster, so that it
    /// runs on the replica that takes an insert; the others fetch its rollup rows through
    /// replication, not by running the view again). `TO` a table of its own, so the rollup is an
    /// ordinary table for retention and for analysts.
    fn create_view(&self, t: &Tables) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {view}{on} TO {storage} AS\n{select}",
            view = self.view(),
            on = t.on_cluster(),
            storage = t.storage(&self.table),
            select = self.select(&t.storage(&t.hits()), None),
        )
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
    /// `INSERT INTO table SELECT ...` from the hits already stored, one month of `received_at`
    /// at a time (each statement's memory and time stay bounded on a large table). Runs after the
    /// view exists, so every hit is seen by the view, by the backfill, or by both, which a
    /// distinct count makes harmless. Also harmless to run again.
    Backfill {
        /// The rollup, by the name analysts query (`Distributed` on a cluster).
        table: String,
        /// Its aggregation over the hits.
        rollup: Rollup,
        /// Where the hits are read: `hits()`, all shards.
        source: String,
    },
}

impl Step {
    /// The statement this step runs (for `AddColumn`, when the column is missing; for `Backfill`,
    /// the whole history at once, where the migration sends [`Step::backfill_month`] per month).
    pub fn sql(&self) -> String {
        match self {
            Step::Sql(sql) => sql.clone(),
            Step::Backfill {
                table,
                rollup,
                source,
            } => format!("INSERT INTO {table}\n{}", rollup.select(source, None)),
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

    /// For `Backfill`, the statement for the hits received in one month (`YYYYMM`).
    pub fn backfill_month(&self, month: u32) -> Option<String> {
        match self {
            Step::Backfill {
                table,
                rollup,
                source,
            } => Some(format!(
                "INSERT INTO {table}\n{}",
                rollup.select(source, Some(&format!("toYYYYMM(received_at) = {month}")))
            )),
            _ => None,
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
    Migration {
        version: ROLLUPS,
        name: "hourly and daily rollups",
        steps: v7,
    },
];

/// The migration creating the rollups.
const ROLLUPS: u32 = 7;

/// The rollups: their storage tables, the `Distributed` tables over them on a cluster, the views
/// feeding them, then the backfill of what `hits` already holds. Their retention is set by
/// `retention::sync_ttl` after migrating, as for every table.
fn v7(t: &Tables, f: Flavour, _retention_days: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    for rollup in t.rollups() {
        steps.push(Step::Sql(rollup.create(t, f)));
        steps.extend(t.distributed(&rollup.table).map(Step::Sql));
        steps.push(Step::Sql(rollup.create_view(t)));
    }
    // After every view exists, so that no hit falls between the views and the backfill.
    steps.extend(t.rollups().map(|rollup| Step::Backfill {
        table: rollup.table.clone(),
        rollup,
        source: t.hits(),
    }));
    steps
}

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
        // A view reads the storage table, not the `Distributed` one, so a rebuild leaves it be.
        for table in t.distributed_tables() {
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
///
/// Migration 7 fills the new rollups from every hit already stored ([`Step::Backfill`]), which
/// on a large table takes a while; running it again after an interruption is harmless.
pub async fn migrate(client: &Client, c: &ClickHouseConfig, flavour: Flavour) -> Result<Vec<u32>> {
    migrate_through(client, c, flavour, u32::MAX).await
}

/// [`migrate`], applying only the migrations up to version `last`: the schema as an older sink
/// left it (tests of an upgrade stand it up this way).
pub async fn migrate_through(
    client: &Client,
    c: &ClickHouseConfig,
    flavour: Flavour,
    last: u32,
) -> Result<Vec<u32>> {
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
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version <= last && !applied.contains(&m.version))
    {
        for step in steps(m, &tables, flavour, c.retention_days) {
            match &step {
                Step::Sql(sql) => client.query(sql).execute().await?,
                Step::Backfill { source, .. } => {
                    backfill(client, &step, source, tables.cluster.is_some()).await?;
                }
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
    let has_rollups = applied.contains(&ROLLUPS) || done.contains(&ROLLUPS);
    let rollups = tables.rollups().map(|r| r.table);
    for table in tables.distributed_tables() {
        if rollups.contains(&table) && !has_rollups {
            continue;
        }
        if let Some(create) = tables.distributed(&table) {
            client.query(&create).execute().await?;
        }
    }
    Ok(done)
}

/// Runs a [`Step::Backfill`] month by month, oldest first, so the newest month (where the sink
/// is writing) is read last, well after the view exists.
async fn backfill(client: &Client, step: &Step, source: &str, distributed: bool) -> Result<()> {
    let months: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT toYYYYMM(received_at) AS month FROM {source} ORDER BY month"
        ))
        .fetch_all()
        .await?;
    let client = if distributed {
        // As for the sink's inserts: return once the shards have the rows, not once queued.
        client.clone().with_setting("insert_distributed_sync", "1")
    } else {
        client.clone()
    };
    for month in months {
        if let Some(sql) = step.backfill_month(month) {
            client.query(&sql).execute().await?;
            tracing::info!(month, "backfilled a rollup");
        }
    }
    Ok(())
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
    fn rollups_are_fed_by_views_and_backfilled_on_one_server_and_on_a_cluster() {
        let single = Tables::new(&ClickHouseConfig::default());
        let cluster = Tables::new(&ClickHouseConfig {
            cluster: "c1".into(),
            ..ClickHouseConfig::default()
        });
        let v7 = |t: &Tables, f| -> Vec<String> {
            steps(&MIGRATIONS[6], t, f, 0)
                .iter()
                .map(Step::sql)
                .collect()
        };
        let one = v7(&single, Flavour::Legacy);
        assert!(one[0].starts_with("CREATE TABLE IF NOT EXISTS pixelpipe.hits_hourly ("));
        assert!(one[0].contains("ENGINE = AggregatingMergeTree()\nPARTITION BY toYYYYMM(hour)"));
        assert!(one[0].contains("    campaign String,") && !one[0].contains("LowCardinality"));
        assert!(one[1].starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS pixelpipe.hits_hourly_mv TO pixelpipe.hits_hourly AS\nSELECT"
        ));
        assert!(one[1].contains("\nFROM pixelpipe.hits\nGROUP BY site_id, kind, hour, campaign"));
        // Backfills come last, after both views exist.
        assert!(one[2].starts_with("CREATE TABLE IF NOT EXISTS pixelpipe.hits_daily ("));
        assert!(one[4].starts_with("INSERT INTO pixelpipe.hits_hourly\nSELECT"));
        assert!(one[5].starts_with("INSERT INTO pixelpipe.hits_daily\nSELECT"));
        assert_eq!(one.len(), 6);
        let modern = v7(&single, Flavour::Modern).join("\n");
        assert!(modern.contains("    device_type LowCardinality(String),"));

        let many = v7(&cluster, Flavour::Legacy);
        assert!(many[0]
            .starts_with("CREATE TABLE IF NOT EXISTS pixelpipe.hits_hourly_local ON CLUSTER c1 ("));
        assert!(many[0].contains(
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/pixelpipe/hits_hourly_local', '{replica}')"
        ));
        assert!(many[1].contains("ENGINE = Distributed(c1, pixelpipe, hits_hourly_local, rand())"));
        // The view reads the replicated table of hits and writes the replicated rollup.
        assert!(many[2].starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS pixelpipe.hits_hourly_mv ON CLUSTER c1 TO pixelpipe.hits_hourly_local AS"
        ));
        assert!(many[2].contains("\nFROM pixelpipe.hits_local\n"));
        // The backfill reads every shard and writes through the Distributed rollup.
        assert!(many[6].starts_with("INSERT INTO pixelpipe.hits_hourly\nSELECT"));
        assert!(many[6].contains("\nFROM pixelpipe.hits\nGROUP BY"));
        assert_eq!(
            steps(&MIGRATIONS[6], &cluster, Flavour::Legacy, 0)[6]
                .backfill_month(202601)
                .unwrap()
                .lines()
                .rev()
                .nth(1),
            Some("WHERE toYYYYMM(received_at) = 202601")
        );
        // A migration adding columns to hits rebuilds the Distributed tables, never the views:
        // they read the storage table.
        let v2 = sql_of(&cluster, &MIGRATIONS[1]);
        assert!(v2.iter().all(|s| !s.contains("_mv")), "{v2:#?}");
    }

    fn sql_of(t: &Tables, m: &Migration) -> Vec<String> {
        steps(m, t, Flavour::Legacy, 0)
            .iter()
            .map(Step::sql)
            .collect()
    }

    #[test]
    fn the_rollup_columns_are_the_views_columns_in_order() {
        let t = Tables::new(&ClickHouseConfig::default());
        for rollup in t.rollups() {
            let create = rollup.create(&t, Flavour::Modern);
            let declared: Vec<&str> = create
                .lines()
                .filter(|l| l.starts_with("    "))
                .map(|l| l.split_whitespace().next().unwrap())
                .collect();
            let select = rollup.select("h", None);
            let selected: Vec<&str> = select
                .lines()
                .filter(|l| l.starts_with("    "))
                .map(|l| l.trim_end_matches(',').rsplit(' ').next().unwrap())
                .collect();
            assert_eq!(declared, selected, "{create}\n{select}");
        }
    }

    #[test]
    fn credentials_become_string_literals() {
        assert_eq!(quoted("default"), "'default'");
        assert_eq!(quoted(r"it's\x"), r"'it\'s\\x'");
    }
}
