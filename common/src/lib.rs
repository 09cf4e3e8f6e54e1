//! What pixelpipe's edge and sink both use, so that neither depends on the other:
//!
//! - [`wire`]: the hit as it travels through Kafka, and its one encoding;
//! - [`classes`]: traffic classes, and the rules on the request alone that edge and sink both
//!   apply;
//! - [`layers`]: configuration from defaults, a file, the environment and flags, its validation,
//!   and [`layers::ConfigError`], the error that names a bad setting;
//! - [`process`]: the configuration flags every binary takes, logging, the stop signal;
//! - [`http`]: binding sockets and the connection-capped accept loop with graceful shutdown;
//! - [`admin`]: the admin listener (`GET /metrics`) and the Prometheus text rendering.
//!
//! Nothing here knows routes, Kafka clients or ClickHouse: those belong to the services.

#![forbid(unsafe_code)]

pub mod admin;
pub mod classes;
pub mod http;
pub mod layers;
pub mod process;
pub mod wire;
