//! `pixelpipe-ingest`: parse the configuration, set up logging, bind, run the edge.

use std::process::ExitCode;

use clap::Parser;
use pixelpipe_ingest::{run, Config, Listeners, RuntimeLayout};

/// The pixelpipe edge: serves tracking pixels and produces the hits to Kafka.
///
/// Settings come from a TOML file, then `PIXELPIPE_*` environment variables, then flags;
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    settings: pixelpipe_ingest::process::ConfigArgs,
    /// Shorthand for `--set http.listen_addr=ADDR`.
    #[arg(long, value_name = "ADDR")]
    listen_addr: Option<String>,
    /// Shorthand for `--set admin.listen_addr=ADDR`.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<String>,
    /// Shorthand for `--set kafka.brokers=LIST`.
    #[arg(long, value_name = "LIST")]
    brokers: Option<String>,
    /// Shorthand for `--set kafka.topic=NAME`.
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pixelpipe_ingest::process::init_logging();

    let mut overrides = Vec::new();
    for (name, value) in [
        ("http.listen_addr", &cli.listen_addr),
        ("admin.listen_addr", &cli.admin_addr),
        ("kafka.brokers", &cli.brokers),
        ("kafka.topic", &cli.topic),
    ] {
        if let Some(v) = value {
            overrides.push((name.to_owned(), v.clone()));
        }
    }
    let config: Config = match cli.settings.resolve("pixelpipe-ingest", overrides) {
        std::ops::ControlFlow::Continue(c) => c,
        std::ops::ControlFlow::Break(code) => return code,
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pixelpipe-ingest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> pixelpipe_ingest::Result<()> {
    let listeners = Listeners::bind(&config)?;
    // multi_thread: this runtime serves HTTP. per_core: the edge starts its own HTTP threads,
    // and this runtime only runs the admin listener and the shutdown sequence.
    let mut builder = match config.http.runtime_layout {
        RuntimeLayout::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(config.http_threads()).thread_name("http");
            b
        }
        RuntimeLayout::PerCore => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|source| pixelpipe_ingest::Error::Io {
            context: "starting the runtime".into(),
            source,
        })?;
    runtime
        .block_on(run(
            config,
            listeners,
            pixelpipe_ingest::process::shutdown_signal(),
        ))
        .map(|_| ())
}
