//! Where a batch is written: [`RowWriter`], the I/O seam, and its ClickHouse implementation.
//!
//! A batch is written as two inserts (bad messages into `bad_hits`, hits into `hits`) in RowBinary,
//! LZ4-compressed. On modern servers each carries an `insert_deduplication_token` made from the
//! batch's offset ranges, so a retry of a batch the server already stored is dropped there; on
//! 18.16, which lacks it, the `ReplacingMergeTree` keyed by `event_id` folds duplicates (see
//! docs/analytics.md for exact counts). On a cluster the inserts go to the `Distributed` tables,
//! synchronously.

use std::future::Future;
use std::time::Duration;

use clickhouse::Client;

use crate::batch::Batch;
use crate::config::ClickHouseConfig;
use crate::error::Result;
use crate::row::{BadMessage, HitRow};
use crate::schema::{Flavour, Tables};

/// Writes a batch's rows.
pub trait RowWriter: Send + Sync {
    /// Stores every row of `batch`, or fails leaving the caller to retry the same batch.
    fn write(&self, batch: &Batch, dedup_token: &str) -> impl Future<Output = Result<()>> + Send;
}

/// A client for the configured server, without the schema validation 18.16 cannot answer (it
/// sends a format and a setting that server does not know).
pub fn client(c: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&c.url)
        .with_user(&c.user)
        .with_password(&c.password)
        .with_compression(clickhouse::Compression::Lz4)
        .with_validation(false)
}

/// Writes to ClickHouse.
pub struct ClickHouse {
    client: Client,
    tables: Tables,
    flavour: Flavour,
    timeout: Duration,
    /// Inserting into `Distributed` tables (`clickhouse.cluster`).
    distributed: bool,
}

impl ClickHouse {
    /// A writer for the configured tables on a server of `flavour`.
    pub fn new(c: &ClickHouseConfig, flavour: Flavour) -> ClickHouse {
        ClickHouse {
            client: client(c),
            tables: Tables::new(c),
            flavour,
            timeout: Duration::from_millis(c.insert_timeout_ms),
            distributed: !c.cluster.is_empty(),
        }
    }

    async fn insert<T, R>(&self, table: &str, rows: &[R], token: &str) -> Result<()>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite + Sync,
        R: std::borrow::Borrow<T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut client = match self.flavour {
            Flavour::Modern => self
                .client
                .clone()
                .with_setting("insert_deduplication_token", token),
            Flavour::Legacy => self.client.clone(),
        };
        if self.distributed {
            // By default a `Distributed` table queues an insert on the receiving server's disk
            // and returns before any shard has the rows; committing offsets then could lose them
            // with that server. Synchronous, the insert returns once every shard has stored its
            // part (modern servers call it `distributed_foreground_insert`; the old name stays
            // as an alias).
            client = client.with_setting("insert_distributed_sync", "1");
        }
        // Unescaped: the name is `database.table`, both validated identifiers (config), and the
        // escaping `insert` would quote it as a single name.
        let mut insert = client
            .insert_unescaped::<T>(table)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        for row in rows {
            insert.write(row.borrow()).await?;
        }
        insert.end().await?;
        Ok(())
    }
}

impl RowWriter for ClickHouse {
    async fn write(&self, batch: &Batch, dedup_token: &str) -> Result<()> {
        self.insert::<BadMessage, _>(&self.tables.bad_hits(), &batch.bad, dedup_token)
            .await?;
        self.insert::<HitRow, _>(&self.tables.hits(), &batch.hits, dedup_token)
            .await
    }
}
