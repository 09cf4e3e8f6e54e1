//! `pixelpipe-ingest`: parse the configuration, set up logging, bind, run the edge.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pixelpipe_common::process;
use pixelpipe_ingest::links::{img_tag, LinkRequest, Links};
use pixelpipe_ingest::params;
use pixelpipe_ingest::{run, Config, Listeners, RuntimeLayout};

/// mimalloc, not glibc's allocator: each hit allocates its strings on an HTTP thread and frees
/// them on a batcher thread, and glibc's `malloc` and `free` were a sixth of the request path
/// (callgrind). Measured on the running edge: 12 % less CPU per request, about 15 MiB more
/// resident memory (10 -> 25 MiB under load), well inside the edge's budget since the channel
/// holds pointers (docs/benchmarks.md, "The HTTP floor").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pixelpipe edge: serves tracking pixels and produces the hits to Kafka.
///
/// Settings come from a TOML file, then `PIXELPIPE_*` environment variables, then flags;
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    settings: process::ConfigArgs,
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
    /// What to do (default: serve).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a pixel or click URL (optionally signed with a key from `[links]`) and print it.
    Url(UrlArgs),
}

/// `pixelpipe-ingest url --base https://px.shop.example --site shop --kind open --sign ...`
#[derive(Debug, Args)]
struct UrlArgs {
    /// Where the edge is reached, e.g. `https://px.shop.example`.
    #[arg(long)]
    base: String,
    /// Site id.
    #[arg(long)]
    site: String,
    /// Hit kind (`e`), e.g. `open`, `conversion`. Default: the edge's (`pageview`, `click`).
    #[arg(long)]
    kind: Option<String>,
    /// Campaign.
    #[arg(long)]
    campaign: Option<String>,
    /// Email message or send id.
    #[arg(long)]
    msg: Option<String>,
    /// Any further parameter, `name=value`; repeat as needed.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Build a click URL (`/c`) that redirects here, instead of a pixel URL.
    #[arg(long, value_name = "URL")]
    click: Option<String>,
    /// Sign the URL with `links.sign_with` (or `--key-id`).
    #[arg(long)]
    sign: bool,
    /// The key to sign with.
    #[arg(long)]
    key_id: Option<String>,
    /// The signature expires this many days from now.
    #[arg(long, value_name = "DAYS")]
    expires_in_days: Option<u64>,
    /// The email's send time, Unix seconds or `now`; opens too soon after it are flagged.
    #[arg(long, value_name = "SECS|now")]
    sent_at: Option<String>,
    /// Print an HTML `<img>` tag for an email instead of the bare URL (pixels only).
    #[arg(long)]
    html: bool,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds the URL `url` was asked for.
fn build_url(config: &Config, a: UrlArgs) -> Result<String, String> {
    if a.html && a.click.is_some() {
        return Err("--html makes an <img> tag; a click URL goes in a link's href".into());
    }
    let sent_at_unix_secs = match a.sent_at.as_deref() {
        None => None,
        Some("now") => Some(now_secs()),
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--sent-at {s:?}: Unix seconds or `now`"))?,
        ),
    };
    let mut pairs = Vec::new();
    pairs.extend(a.campaign.map(|c| (params::CAMPAIGN.to_owned(), c)));
    pairs.extend(a.msg.map(|m| (params::MESSAGE_ID.to_owned(), m)));
    pairs.extend(a.params);
    let links = Links::new(&config.links).map_err(|e| e.to_string())?;
    let url = links.build(&LinkRequest {
        base_url: a.base,
        site: a.site,
        kind: a.kind,
        params: pairs,
        click_target: a.click,
        sign: a.sign,
        key_id: a.key_id,
        expires_at_unix_secs: a.expires_in_days.map(|d| now_secs() + d * 86_400),
        sent_at_unix_secs,
    })?;
    Ok(if a.html { img_tag(&url) } else { url })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();

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
    if let Some(Command::Url(args)) = cli.command {
        return match build_url(&config, args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pixelpipe-ingest url: {e}");
                ExitCode::from(2)
            }
        };
    }
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
        .map_err(|source| pixelpipe_ingest::Error::io("starting the runtime", source))?;
    runtime
        .block_on(run(config, listeners, process::shutdown_signal()))
        .map(|_| ())
}
