//! Where a hit comes from: country, region, city, ASN and AS organisation, from MaxMind-format
//! databases (GeoLite2/GeoIP2, DB-IP lite) given by path.
//!
//! Looked up in the batcher threads before the privacy policy minimises the address, so the raw
//! IP need never leave the edge. A configured database that is missing is a warning and empty
//! fields; one that exists but cannot be read is a start-up error naming the setting.
//!
//! Databases are replaced while the edge runs ([`Geo::reload_if_changed`], every
//! `geoip.reload_interval_ms`): MaxMind ships weekly updates, and `geoipupdate` replaces the file in
//! place. A new file that cannot be read is logged and counted, and the old database stays in use.
//! This module does not decide what is kept (see `privacy`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use maxminddb::{geoip2, Reader};
use serde::{Deserialize, Serialize};

use crate::wire::Hit;
use pixelpipe_common::layers::ConfigError;

/// The `[geoip]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// City (or country) database, e.g. `GeoLite2-City.mmdb`. Empty: no place lookup. Default
    /// empty.
    pub city_db_path: String,
    /// ASN database, e.g. `GeoLite2-ASN.mmdb`. Empty: no ASN lookup. Default empty.
    pub asn_db_path: String,
    /// How often the database files are checked for a new version (modification time or size
    /// changed), which is then loaded without a restart. 0 turns reloading off. Default 60000.
    pub reload_interval_ms: u64,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            city_db_path: String::new(),
            asn_db_path: String::new(),
            reload_interval_ms: 60_000,
        }
    }
}

/// One database: its reader and the file version it was read from.
struct Db {
    reader: Reader<Vec<u8>>,
    stamp: Stamp,
}

/// What says a file changed: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// The databases in use; replaced whole on reload, sharing the one that did not change.
#[derive(Default)]
struct Databases {
    city: Option<Arc<Db>>,
    asn: Option<Arc<Db>>,
}

/// The databases, opened, and the settings to reload them.
pub struct Geo {
    current: RwLock<Arc<Databases>>,
    config: GeoConfig,
    /// Serialises reloads, and remembers the file versions that failed to load (city, ASN) so a
    /// broken file is not read again at every check.
    reloading: Mutex<[Option<Stamp>; 2]>,
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dbs = self.databases();
        f.debug_struct("Geo")
            .field("city", &dbs.city.is_some())
            .field("asn", &dbs.asn.is_some())
            .finish()
    }
}

/// What [`Geo::reload_if_changed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reload {
    /// Databases replaced by a new version of their file.
    pub loaded: u32,
    /// New versions that could not be read (the database in use was kept). Each broken version
    /// is tried, logged and counted once, not at every check.
    pub failed: u32,
}

impl Geo {
    /// Opens the configured databases.
    pub fn open(c: &GeoConfig) -> Result<Geo, ConfigError> {
        let dbs = Databases {
            city: open_one(&c.city_db_path, "geoip.city_db_path")?,
            asn: open_one(&c.asn_db_path, "geoip.asn_db_path")?,
        };
        Ok(Geo {
            current: RwLock::new(Arc::new(dbs)),
            config: c.clone(),
            reloading: Mutex::new([None, None]),
        })
    }

    /// No databases: lookups do nothing.
    pub fn none() -> Geo {
        Geo {
            current: RwLock::new(Arc::new(Databases::default())),
            config: GeoConfig::default(),
            reloading: Mutex::new([None, None]),
        }
    }

    /// The configured reload interval, `None` when reloading is off or nothing is configured.
    pub fn reload_interval(&self) -> Option<std::time::Duration> {
        let c = &self.config;
        (c.reload_interval_ms > 0 && !(c.city_db_path.is_empty() && c.asn_db_path.is_empty()))
            .then(|| std::time::Duration::from_millis(c.reload_interval_ms))
    }

    fn databases(&self) -> Arc<Databases> {
        // A poisoned lock only means a reader panicked; the databases themselves are intact.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loads every configured database whose file changed since it was read. A file that is now
    /// missing or unreadable is logged and the database in use is kept: a half-written download
    /// must not empty the place columns.
    pub fn reload_if_changed(&self) -> Reload {
        let mut failed_versions = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.databases();
        let mut report = Reload::default();
        let mut next = |db: &Option<Arc<Db>>,
                        path: &str,
                        setting: &str,
                        failed: &mut Option<Stamp>|
         -> Option<Arc<Db>> {
            // Missing now: keep what we have. Unchanged, or the version that already failed: done.
            let stamp = stamp(path).filter(|s| Some(*s) != *failed)?;
            if path.is_empty() || db.as_ref().is_some_and(|db| db.stamp == stamp) {
                return None;
            }
            match Reader::open_readfile(path) {
                Ok(reader) => {
                    tracing::info!(setting, path, "GeoIP database reloaded");
                    report.loaded += 1;
                    *failed = None;
                    Some(Arc::new(Db { reader, stamp }))
                }
                Err(e) => {
                    tracing::error!(setting, path, error = %e, "new GeoIP database unreadable; keeping the one in use");
                    report.failed += 1;
                    *failed = Some(stamp);
                    None
                }
            }
        };
        let [city_failed, asn_failed] = &mut *failed_versions;
        let city = next(
            &old.city,
            &self.config.city_db_path,
            "geoip.city_db_path",
            city_failed,
        );
        let asn = next(
            &old.asn,
            &self.config.asn_db_path,
            "geoip.asn_db_path",
            asn_failed,
        );
        if city.is_some() || asn.is_some() {
            // Databases are replaced whole; the Arc lets lookups in flight finish on the old ones.
            let merged = Databases {
                city: city.or_else(|| old.city.clone()),
                asn: asn.or_else(|| old.asn.clone()),
            };
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
        }
        report
    }

    /// Fills the hit's place fields from its client IP. Lookup errors (a damaged record) leave
    /// the fields empty; they never stop a hit.
    pub fn enrich(&self, hit: &mut Hit) {
        let Some(ip) = hit.client_ip.map(|ip| ip.to_canonical()) else {
            return;
        };
        let dbs = self.databases();
        if let Some(place) = dbs
            .city
            .as_ref()
            .and_then(|db| lookup::<geoip2::City>(&db.reader, ip))
        {
            hit.geo_country = place.country.iso_code.map(str::to_owned);
            hit.geo_region = place
                .subdivisions
                .first()
                .and_then(|s| s.iso_code)
                .map(str::to_owned);
            hit.geo_city = place.city.names.english.map(str::to_owned);
        }
        if let Some(asn) = dbs
            .asn
            .as_ref()
            .and_then(|db| lookup::<geoip2::Asn>(&db.reader, ip))
        {
            hit.asn = asn.autonomous_system_number;
            hit.as_org = asn.autonomous_system_organization.map(str::to_owned);
        }
    }
}

fn lookup<'a, T: Deserialize<'a>>(reader: &'a Reader<Vec<u8>>, ip: IpAddr) -> Option<T> {
    reader.lookup(ip).ok()?.decode::<T>().ok().flatten()
}

fn stamp(path: &str) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

fn open_one(path: &str, setting: &str) -> Result<Option<Arc<Db>>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let Some(stamp) = stamp(path) else {
        tracing::warn!(
            setting,
            path,
            "GeoIP database not found; its fields stay empty until it appears"
        );
        return Ok(None);
    };
    Reader::open_readfile(path)
        .map(|reader| Some(Arc::new(Db { reader, stamp })))
        .map_err(|e| {
            ConfigError::setting(
                setting,
                format!("{path} is not a readable MaxMind database: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::sample_hit;

    fn data(name: &str) -> String {
        format!("{}/tests/data/geoip/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn geo() -> Geo {
        Geo::open(&GeoConfig {
            city_db_path: data("GeoIP2-City-Test.mmdb"),
            asn_db_path: data("GeoLite2-ASN-Test.mmdb"),
            ..GeoConfig::default()
        })
        .unwrap()
    }

    /// A hit from `ip` with no place fields yet.
    fn bare_hit(ip: &str) -> Hit {
        let mut h = sample_hit();
        h.client_ip = Some(ip.parse().unwrap());
        (h.geo_country, h.geo_region, h.geo_city, h.asn, h.as_org) = (None, None, None, None, None);
        h
    }

    fn enriched(ip: &str) -> Hit {
        let mut h = bare_hit(ip);
        geo().enrich(&mut h);
        h
    }

    // Expected values are those of the databases' source JSON (tests/data/geoip/*.json).
    #[test]
    fn places_of_the_test_database() {
        let h = enriched("81.2.69.142");
        assert_eq!(
            (
                h.geo_country.as_deref(),
                h.geo_region.as_deref(),
                h.geo_city.as_deref()
            ),
            (Some("GB"), Some("ENG"), Some("London"))
        );
        let h = enriched("::ffff:2.125.160.216");
        assert_eq!(
            (h.geo_country.as_deref(), h.geo_city.as_deref()),
            (Some("GB"), Some("Boxford")),
            "mapped IPv4"
        );
        let h = enriched("2001:218::1");
        assert_eq!(
            (h.geo_country.as_deref(), h.geo_city.as_deref()),
            (Some("JP"), None)
        );
        let h = enriched("10.0.0.1");
        assert_eq!(
            (h.geo_country, h.asn),
            (None, None),
            "private addresses are nowhere"
        );
    }

    #[test]
    fn networks_of_the_test_database() {
        let h = enriched("1.128.0.1");
        assert_eq!(
            (h.asn, h.as_org.as_deref()),
            (Some(1221), Some("Telstra Pty Ltd"))
        );
        let h = enriched("12.81.92.7");
        assert_eq!(
            (h.asn, h.as_org.as_deref()),
            (Some(7018), Some("AT&T Services"))
        );
    }

    #[test]
    fn missing_is_a_warning_and_corrupt_is_an_error() {
        let g = Geo::open(&GeoConfig {
            city_db_path: "/nonexistent/City.mmdb".into(),
            asn_db_path: String::new(),
            ..GeoConfig::default()
        })
        .unwrap();
        let mut h = bare_hit("81.2.69.142");
        g.enrich(&mut h);
        assert_eq!(h.geo_country, None);
        for bad in [
            "invalid-string-length.mmdb",
            "libmaxminddb-corrupt-search-tree.mmdb",
        ] {
            let path = data(&format!("bad/{bad}"));
            let opened = Geo::open(&GeoConfig {
                city_db_path: path.clone(),
                asn_db_path: String::new(),
                ..GeoConfig::default()
            });
            match opened {
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("geoip.city_db_path") && text.contains(&path),
                        "{text}"
                    );
                }
                // Some damage only shows in lookups: then no field may be filled from it.
                Ok(g) => {
                    let mut h = bare_hit("81.2.69.142");
                    g.enrich(&mut h);
                    assert_eq!(h.geo_country, None, "{bad}");
                }
            }
        }
        let not_a_db = data("LICENSE-MIT");
        let e = Geo::open(&GeoConfig {
            city_db_path: not_a_db,
            asn_db_path: String::new(),
            ..GeoConfig::default()
        })
        .expect_err("not a database");
        assert!(e.to_string().contains("geoip.city_db_path"), "{e}");
    }

    #[test]
    fn a_replaced_database_is_loaded_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("pixelpipe-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let live = dir.join("City.mmdb");
        // Start with the ASN database under the city name: no city answers.
        std::fs::copy(data("GeoLite2-ASN-Test.mmdb"), &live).unwrap();
        let g = Geo::open(&GeoConfig {
            city_db_path: live.to_string_lossy().into_owned(),
            asn_db_path: data("GeoLite2-ASN-Test.mmdb"),
            ..GeoConfig::default()
        })
        .unwrap();
        let city_of = |g: &Geo| {
            let mut h = bare_hit("81.2.69.142");
            g.enrich(&mut h);
            (h.geo_city, h.asn)
        };
        assert_eq!(city_of(&g), (None, None));
        let report = |loaded, failed| Reload { loaded, failed };
        assert_eq!(g.reload_if_changed(), report(0, 0));

        // geoipupdate's way: write a new file beside it, rename it over the old one.
        let next = dir.join("City.mmdb.new");
        std::fs::copy(data("GeoIP2-City-Test.mmdb"), &next).unwrap();
        std::fs::rename(&next, &live).unwrap();
        assert_eq!(g.reload_if_changed(), report(1, 0));
        assert_eq!(city_of(&g).0.as_deref(), Some("London"));
        let asn_of = |g: &Geo| {
            let mut h = bare_hit("1.128.0.1");
            g.enrich(&mut h);
            h.asn
        };
        assert_eq!(asn_of(&g), Some(1221), "the unchanged database is kept");

        // A broken download: logged, counted by the caller, and the good database stays.
        std::fs::write(&live, b"half a download").unwrap();
        assert_eq!(g.reload_if_changed(), report(0, 1));
        assert_eq!(city_of(&g).0.as_deref(), Some("London"));
        assert_eq!(
            g.reload_if_changed(),
            report(0, 0),
            "a broken version is tried once"
        );
        // Removed: the one in use stays too.
        std::fs::remove_file(&live).unwrap();
        assert_eq!(g.reload_if_changed(), report(0, 0));
        assert_eq!(city_of(&g).0.as_deref(), Some("London"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
