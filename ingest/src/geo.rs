//! Where a hit comes from: country, region, city, ASN and AS organisation, from MaxMind-format
//! databases (GeoLite2/GeoIP2, DB-IP lite) given by path.
//!
//! Looked up in the batcher threads before the privacy policy minimises the address, so the raw
//! IP need never leave the edge. A configured database that is missing is a warning and empty
//! fields; one that exists but cannot be read is a start-up error naming the setting. Databases are
//! read once at start (restart the edge to load new ones). This module does not decide what is
//! kept (see `privacy`).

use std::net::IpAddr;
use std::path::Path;

use maxminddb::{geoip2, Reader};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::wire::Hit;

/// The `[geoip]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// City (or country) database, e.g. `GeoLite2-City.mmdb`. Empty: no place lookup. Default
    /// empty.
    pub city_db_path: String,
    /// ASN database, e.g. `GeoLite2-ASN.mmdb`. Empty: no ASN lookup. Default empty.
    pub asn_db_path: String,
}

/// The databases, opened.
pub struct Geo {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geo")
            .field("city", &self.city.is_some())
            .field("asn", &self.asn.is_some())
            .finish()
    }
}

impl Geo {
    /// Opens the configured databases.
    pub fn open(c: &GeoConfig) -> Result<Geo> {
        Ok(Geo {
            city: open_one(&c.city_db_path, "geoip.city_db_path")?,
            asn: open_one(&c.asn_db_path, "geoip.asn_db_path")?,
        })
    }

    /// No databases: lookups do nothing.
    pub fn none() -> Geo {
        Geo {
            city: None,
            asn: None,
        }
    }

    /// Fills the hit's place fields from its client IP. Lookup errors (a damaged record) leave
    /// the fields empty; they never stop a hit.
    pub fn enrich(&self, hit: &mut Hit) {
        let Some(ip) = hit.client_ip.map(|ip| ip.to_canonical()) else {
            return;
        };
        if let Some(place) = self
            .city
            .as_ref()
            .and_then(|r| lookup::<geoip2::City>(r, ip))
        {
            hit.geo_country = place.country.iso_code.map(str::to_owned);
            hit.geo_region = place
                .subdivisions
                .first()
                .and_then(|s| s.iso_code)
                .map(str::to_owned);
            hit.geo_city = place.city.names.english.map(str::to_owned);
        }
        if let Some(asn) = self.asn.as_ref().and_then(|r| lookup::<geoip2::Asn>(r, ip)) {
            hit.asn = asn.autonomous_system_number;
            hit.as_org = asn.autonomous_system_organization.map(str::to_owned);
        }
    }
}

fn lookup<'a, T: Deserialize<'a>>(reader: &'a Reader<Vec<u8>>, ip: IpAddr) -> Option<T> {
    reader.lookup(ip).ok()?.decode::<T>().ok().flatten()
}

fn open_one(path: &str, setting: &str) -> Result<Option<Reader<Vec<u8>>>> {
    if path.is_empty() {
        return Ok(None);
    }
    if !Path::new(path).exists() {
        tracing::warn!(
            setting,
            path,
            "GeoIP database not found; its fields stay empty"
        );
        return Ok(None);
    }
    Reader::open_readfile(path).map(Some).map_err(|e| {
        Error::config(
            setting,
            format!("{path} is not a readable MaxMind database: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests_support::sample_hit;

    fn data(name: &str) -> String {
        format!("{}/tests/data/geoip/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn geo() -> Geo {
        Geo::open(&GeoConfig {
            city_db_path: data("GeoIP2-City-Test.mmdb"),
            asn_db_path: data("GeoLite2-ASN-Test.mmdb"),
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
        })
        .expect_err("not a database");
        assert!(e.to_string().contains("geoip.city_db_path"), "{e}");
    }
}
