//! The modern-server path, proved on a current ClickHouse engine: the sink's modern DDL, and a
//! RowBinary batch written by the sink's own writer, load into ClickHouse 26.9 as shipped in the
//! `chdb-core` PyPI package (in-process), and every value reads back equal.
//!
//! The batch is captured on the wire: the sink's `ClickHouse` writer talks to a one-shot HTTP
//! listener here, which keeps the INSERT body (LZ4 blocks in ClickHouse's framing) and answers 200.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;

use pixelpipe_common::wire;
use pixelpipe_sink::batch::Batch;
use pixelpipe_sink::config::{ClickHouseConfig, EnrichConfig};
use pixelpipe_sink::enrich::Enricher;
use pixelpipe_sink::retention;
use pixelpipe_sink::row::{decode, Decoded, HitRow};
use pixelpipe_sink::schema::{self, Flavour, Tables, MIGRATIONS};
use pixelpipe_sink::store::{ClickHouse, RowWriter};

fn chdb_python() -> String {
    std::env::var("TEST_CHDB_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap();
        format!("{home}/.cache/pixelpipe/chdb-26.9.0/bin/python")
    })
}

fn rows() -> Vec<HitRow> {
    let mut enricher = Enricher::new(&EnrichConfig::default()).unwrap();
    // Recent: the modern table's TTL (30 days here) would drop older rows on insert.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let samples = [
        r#""client_ip":"203.0.113.9","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1","signature":"valid","sent_at_ms":1700000000000,"prefetch":true,"campaign":"spring","variant":"B","value":19.99,"currency":"EUR","props":[["plan","pro"],["seats","3"]],"head_request":true"#,
        r#""client_ip":"2001:db8::7","geo_country":"GB","geo_region":"ENG","geo_city":"London","asn":1221,"as_org":"Telstra Pty Ltd","title":"Ünïcödé \"quoted\" \\ back\\slash","message_id":"m-1","cut_fields":2,"user_agent":"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)","unverified":true"#,
        r#""url":"https://shop.example/a?b=c&d=e","dnt":"1","sec_gpc":"1","ip_hash":"0123456789abcdef0123456789abcdef","anonymized":true"#,
    ];
    samples
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let json = format!(
                r#"{{"schema_version":1,"event_id":"{}","received_at_ms":{},"edge_id":"edge-{i}","transport":"{}",
                    "kind":"open","site_id":"site-{i}","path":"/p.gif",{extra}}}"#,
                uuid::Uuid::now_v7(),
                now_ms - i as u64 * 1_000,
                if i == 1 { "beacon" } else { "pixel" }
            );
            let mut buf = Vec::new();
            wire::encode(&wire::decode(json.as_bytes()).unwrap(), &mut buf);
            match decode("t", i as i32, 100 + i as i64, &buf, &mut enricher).remove(0) {
                Decoded::Hit(h) => *h,
                Decoded::Bad(b) => panic!("{b:?}"),
            }
        })
        .collect()
}

/// Accepts one HTTP request, answers 200, returns its request line and decompressed body.
fn capture_one(listener: std::net::TcpListener) -> (String, Vec<u8>) {
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut chunked, mut length) = (false, 0usize);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).unwrap();
    }
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    // ClickHouse framing: 16-byte checksum, 0x82, compressed size (with the 9 header bytes),
    // uncompressed size, then one LZ4 block.
    let mut out = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        assert_eq!(rest[16], 0x82, "LZ4 block");
        let compressed = u32::from_le_bytes(rest[17..21].try_into().unwrap()) as usize;
        let plain = u32::from_le_bytes(rest[21..25].try_into().unwrap()) as usize;
        out.extend(lz4_flex::block::decompress(&rest[25..16 + compressed], plain).unwrap());
        rest = &rest[16 + compressed..];
    }
    (request_line, out)
}

/// The column list of `INSERT INTO t(a,b,c) FORMAT RowBinary` in a percent-encoded request line.
fn insert_columns(request_line: &str) -> Vec<String> {
    // A form-encoded query: `+` is a space.
    let decoded = percent_encoding::percent_decode_str(&request_line.replace('+', " "))
        .decode_utf8()
        .unwrap()
        .into_owned();
    let list = decoded
        .split_once('(')
        .unwrap()
        .1
        .split_once(')')
        .unwrap()
        .0;
    list.split(',')
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs chDB: deploy/local/test.sh installs it"
)]
async fn modern_ddl_and_the_sinks_rowbinary_load_into_clickhouse_26() {
    let rows = rows();
    // The rows carry what enrichment and signing add, so those columns are proved too.
    assert_eq!(
        (
            rows[0].device_type.as_str(),
            rows[0].traffic_class.as_str(),
            rows[0].sent_at
        ),
        ("mobile", "prefetch", 1_700_000_000)
    );
    assert_eq!(
        (
            rows[1].browser.as_str(),
            rows[1].class_reason.as_str(),
            rows[1].unverified
        ),
        ("Googlebot", "crawler_ua", 1)
    );
    let mut batch = Batch::default();
    for r in rows.clone() {
        batch.push_hit(Box::new(r));
    }
    // The sink's own writer, for a modern server, against the capturing listener.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = ClickHouseConfig {
        url: format!("http://{}", listener.local_addr().unwrap()),
        ..ClickHouseConfig::default()
    };
    let capture = std::thread::spawn(move || capture_one(listener));
    ClickHouse::new(&config, Flavour::Modern)
        .write(&batch, "token")
        .await
        .unwrap();
    let (request_line, rowbinary) = capture.join().unwrap();
    // The columns exactly as the sink's insert names them, in the order of its RowBinary.
    let columns = insert_columns(&request_line);
    assert!(
        columns.len() > 30 && columns.contains(&"ip_hash".to_string()),
        "{columns:?}"
    );

    // The modern DDL: every migration's steps for a modern server.
    let tables = Tables::new(&config);
    let ddl: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|m| (m.steps)(&tables, Flavour::Modern, 30))
        .map(|step| step.sql())
        .collect();

    let dir = std::env::temp_dir().join(format!("pp-chdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rows.bin"), &rowbinary).unwrap();
    std::fs::write(dir.join("ddl.sql"), ddl.join(";\n")).unwrap();
    std::fs::write(dir.join("columns.txt"), columns.join(",")).unwrap();
    // Retention as the sink's start-up brings it in line: bad_hits gets its own TTL.
    let rules = retention::rules(&ClickHouseConfig {
        retention_days: 30,
        bad_hits_retention_days: 7,
        ..config.clone()
    });
    // hits has its TTL from its DDL; the others get theirs as `sync_ttl` sends it.
    let modify: Vec<String> = rules[1..]
        .iter()
        .map(|r| r.modify_ttl_statement())
        .collect();
    std::fs::write(dir.join("retention.sql"), modify.join(";\n")).unwrap();
    std::fs::write(dir.join("remove.sql"), rules[1].remove_ttl_statement()).unwrap();
    let script = format!(
        r#"
import json
from chdb import session
s = session.Session("db")
s.query("CREATE DATABASE IF NOT EXISTS pixelpipe")
for stmt in open("ddl.sql").read().split(";\n"):
    s.query(stmt)
columns = open("columns.txt").read().split(",")
types = dict((r["name"], r["type"]) for r in map(json.loads, str(s.query("SELECT name, type FROM system.columns WHERE database = 'pixelpipe' AND table = '{name}'", "JSONEachRow")).splitlines()))
structure = ", ".join(c + " " + types[c] for c in columns).replace("'", "\\'")
s.query("INSERT INTO {table} (" + ", ".join(columns) + ") SELECT * FROM file('rows.bin', RowBinary, '" + structure + "')")
print(s.query("SELECT version() AS v", "JSONEachRow"), end="")
for stmt in open("retention.sql").read().split(";\n"):
    s.query(stmt)
print(s.query("SELECT name, create_table_query FROM system.tables WHERE database = 'pixelpipe' AND name IN ('{name}', '{bad_name}', '{name}_daily', '{name}_hourly') ORDER BY name", "JSONEachRow"), end="")
s.query(open("remove.sql").read())
print(s.query("SELECT name, create_table_query FROM system.tables WHERE database = 'pixelpipe' AND name = '{bad_name}'", "JSONEachRow"), end="")
print(s.query("SELECT toString(event_id) AS event_id, toUnixTimestamp(received_at) AS received_at, edge_id, transport, kind, site_id, IPv6NumToString(client_ip) AS ip, user_agent, title, url, dnt, sec_gpc, head_request, campaign, variant, message_id, value, currency, prop_keys, prop_values, cut_fields, kafka_partition, kafka_offset, kafka_index, ip_hash, anonymized, geo_country, geo_region, geo_city, asn, as_org, prefetch, browser, browser_version, os, os_version, device_type, traffic_class, class_reason, signature, toUnixTimestamp(sent_at) AS sent_at, unverified, toTypeName(client_ip) AS ip_type, toTypeName(kind) AS kind_type FROM {table} ORDER BY kafka_offset", "JSONEachRow"), end="")
"#,
        table = tables.hits(),
        name = tables.hits().split_once('.').unwrap().1,
        bad_name = tables.bad_hits().split_once('.').unwrap().1,
    );
    let out = Command::new(chdb_python())
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "chDB python {}: {e} (run deploy/local/chdb.sh install)",
                chdb_python()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chDB failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let version = lines[0]["v"].as_str().unwrap();
    assert!(version.starts_with("26."), "a modern engine: {version}");
    // The server prints each TTL back in the form `retention::sync_ttl` looks for, so a start
    // with unchanged settings sends no ALTER.
    // In name order: bad_hits, hits, hits_daily, hits_hourly.
    for (line, rule) in lines[1..5]
        .iter()
        .zip([&rules[1], &rules[0], &rules[3], &rules[2]])
    {
        let create = line["create_table_query"].as_str().unwrap();
        assert!(create.contains(&format!("TTL {}", rule.ttl())), "{create}");
    }
    // And a retention of 0 removes the TTL again (`sync_ttl`'s other statement).
    let removed = lines[5]["create_table_query"].as_str().unwrap();
    assert!(!removed.contains(" TTL "), "{removed}");
    let back = &lines[6..];
    assert_eq!(back.len(), rows.len());
    for (got, want) in back.iter().zip(&rows) {
        assert_eq!(got["event_id"], want.event_id.to_string());
        assert_eq!(
            got["received_at"].as_u64().unwrap(),
            u64::from(want.received_at)
        );
        for (col, value) in [
            ("edge_id", &want.edge_id),
            ("transport", &want.transport),
            ("kind", &want.kind),
            ("site_id", &want.site_id),
            ("user_agent", &want.user_agent),
            ("title", &want.title),
            ("url", &want.url),
            ("dnt", &want.dnt),
            ("sec_gpc", &want.sec_gpc),
            ("campaign", &want.campaign),
            ("variant", &want.variant),
            ("message_id", &want.message_id),
            ("currency", &want.currency),
            ("geo_country", &want.geo_country),
            ("geo_region", &want.geo_region),
            ("geo_city", &want.geo_city),
            ("as_org", &want.as_org),
            ("browser", &want.browser),
            ("browser_version", &want.browser_version),
            ("os", &want.os),
            ("os_version", &want.os_version),
            ("device_type", &want.device_type),
            ("traffic_class", &want.traffic_class.as_str().to_owned()),
            ("class_reason", &want.class_reason),
            ("signature", &want.signature),
        ] {
            assert_eq!(got[col].as_str().unwrap(), value, "{col}");
        }
        let ip = std::net::Ipv6Addr::from(want.client_ip);
        let want_ip = match ip.to_ipv4_mapped() {
            Some(v4) => format!("::ffff:{v4}"),
            None => ip.to_string(),
        };
        assert_eq!(got["ip"].as_str().unwrap(), want_ip);
        assert_eq!(
            got["head_request"].as_u64().unwrap(),
            u64::from(want.head_request)
        );
        assert_eq!(got["value"].as_f64(), want.value);
        assert_eq!(got["prop_keys"], serde_json::json!(want.prop_keys));
        assert_eq!(got["prop_values"], serde_json::json!(want.prop_values));
        assert_eq!(
            got["cut_fields"].as_u64().unwrap(),
            u64::from(want.cut_fields)
        );
        assert_eq!(
            got["kafka_partition"].as_i64().unwrap(),
            i64::from(want.kafka_partition)
        );
        assert_eq!(got["kafka_offset"].as_i64().unwrap(), want.kafka_offset);
        assert_eq!(
            got["kafka_index"].as_u64().unwrap(),
            u64::from(want.kafka_index)
        );
        for (col, value) in [("prefetch", want.prefetch), ("unverified", want.unverified)] {
            assert_eq!(got[col].as_u64().unwrap(), u64::from(value), "{col}");
        }
        assert_eq!(got["sent_at"].as_u64().unwrap(), u64::from(want.sent_at));
        assert_eq!(got["ip_type"], "IPv6");
        assert_eq!(got["kind_type"], "LowCardinality(String)");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A modern server parses every statement the sink sends to a replicated cluster: the
/// migrations with `ON CLUSTER`, the replicated engines, the `Distributed` tables and their
/// rebuilds, and the retention statements. chDB runs in-process, without ZooKeeper or other
/// servers, so `EXPLAIN AST` checks the syntax. Their 18.16 forms run for real on the local
/// cluster in `tests/cluster.rs` (all but the TTL statements: 18.16 has no TTL).
#[test]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs chDB: deploy/local/test.sh installs it"
)]
fn the_cluster_ddl_parses_on_a_modern_server() {
    let config = ClickHouseConfig {
        cluster: "pixelpipe".into(),
        retention_days: 30,
        ..ClickHouseConfig::default()
    };
    let tables = Tables::new(&config);
    let mut ddl = vec![schema::migrations_table(&tables)];
    ddl.extend(
        MIGRATIONS
            .iter()
            .flat_map(|m| schema::steps(m, &tables, Flavour::Modern, 30))
            .map(|step| step.sql()),
    );
    for rule in retention::rules(&config) {
        ddl.extend([rule.modify_ttl_statement(), rule.remove_ttl_statement()]);
    }
    // Every statement but the rollups' backfills, which insert through the Distributed tables.
    assert!(
        ddl.iter()
            .all(|sql| sql.contains(" ON CLUSTER pixelpipe") || sql.starts_with("INSERT INTO")),
        "{ddl:#?}"
    );
    assert_eq!(
        ddl.iter()
            .filter(|sql| sql.starts_with("INSERT INTO"))
            .count(),
        2
    );
    let dir = std::env::temp_dir().join(format!("pp-chdb-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ddl.sql"), ddl.join(";\n")).unwrap();
    let script = r#"
from chdb import session
s = session.Session("db")
for stmt in open("ddl.sql").read().split(";\n"):
    try:
        s.query("EXPLAIN AST " + stmt)
    except Exception as e:
        raise SystemExit(stmt + "\n" + str(e))
print("parsed")
"#;
    let out = Command::new(chdb_python())
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chDB refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "parsed");
    std::fs::remove_dir_all(&dir).unwrap();
}
