//! `pixelpipe-sink`: parse the configuration, set up logging, then run the sink or the migrations.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pixelpipe_common::{http, process};
use pixelpipe_sink::SinkConfig;

/// mimalloc, not glibc's allocator: a batch is tens of thousands of rows of small strings, all
/// freed at once, and glibc spent about a quarter of the sink's CPU in `malloc`, `free` and
/// `malloc_consolidate` during a backlog drain (perf, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pixelpipe sink: hits from Kafka into ClickHouse.
///
/// Settings come from a TOML file, then `PIXELPIPE_*` environment variables, then flags; see
/// docs/configuration-sink.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    settings: process::ConfigArgs,
    /// What to do (default: run).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume hits and store them (the default).
    Run,
    /// Apply pending schema migrations and exit.
    Migrate,
    /// Copy every message now on the dead-letter topic back onto the hits topic, and exit.
    ReplayDeadLetters,
    /// Remove rows past each table's retention, and exit: on ClickHouse 18.16, which has no TTL,
    /// old months of hits and of the rollups are dropped and old bad hits deleted; run it daily
    /// from a timer. On modern servers the TTL does it and this does nothing.
    Retention,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();

    let config: SinkConfig = match cli.settings.resolve("pixelpipe-sink", Vec::new()) {
        std::ops::ControlFlow::Continue(c) => c,
        std::ops::ControlFlow::Break(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pixelpipe-sink: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Migrate => pixelpipe_sink::migrate(&config).await.map(|applied| {
                println!("applied migrations: {applied:?}");
            }),
            Command::Retention => pixelpipe_sink::delete_expired(&config).await.map(|sent| {
                for sql in sent {
                    println!("{sql}");
                }
            }),
            Command::ReplayDeadLetters => pixelpipe_sink::replay::replay_dead_letters(&config)
                .await
                .map(|n| {
                    println!(
                        "replayed {n} messages from {} onto {}",
                        config.dead_letter_topic(),
                        config.kafka.topic
                    );
                }),
            Command::Run => {
                let admin = http::bind(config.admin.listen_addr, 1, "admin.listen_addr")
                    .map_err(pixelpipe_sink::Error::from)?
                    .remove(0);
                pixelpipe_sink::run(config, admin, process::shutdown_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pixelpipe-sink: {e}");
            ExitCode::FAILURE
        }
    }
}
