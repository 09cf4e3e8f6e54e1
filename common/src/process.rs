//! Process plumbing every pixelpipe binary shares: logging set-up, the stop signal, and the
//! `--set NAME=VALUE` flag parser. Nothing here knows what the process does.

/// Logs to stderr through `tracing`, filtered by `PIXELPIPE_LOG` (default `info`); colours only on
/// a terminal. librdkafka's own log lines arrive through the `log` bridge.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIXELPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The flags every pixelpipe binary takes for its configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "PIXELPIPE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Validate the configuration, print the effective settings as TOML, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Set any setting by its dotted name, e.g. `--set kafka.linger_ms=5` or
    /// `--set kafka.properties.security.protocol=SASL_SSL`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_setting)]
    pub set: Vec<(String, String)>,
}

impl ConfigArgs {
    /// Loads and validates the configuration from these flags (after `shorthands`, which they
    /// override), with the process environment. On a bad setting it prints the error and
    /// returns exit code 2; with `--check-config` it prints the effective settings as TOML and
    /// returns success. Otherwise the configuration.
    pub fn resolve<T>(
        &self,
        program: &str,
        shorthands: Vec<(String, String)>,
    ) -> std::ops::ControlFlow<std::process::ExitCode, T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default + crate::layers::Validate,
    {
        use std::ops::ControlFlow::{Break, Continue};
        let mut overrides = shorthands;
        overrides.extend(self.set.iter().cloned());
        let config: T = match crate::layers::load_validated(
            self.config.as_deref(),
            std::env::vars(),
            &overrides,
        ) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{program}: {e}");
                return Break(std::process::ExitCode::from(2));
            }
        };
        if self.check_config {
            print!(
                "{}",
                toml::to_string_pretty(&config).expect("config serialises")
            );
            return Break(std::process::ExitCode::SUCCESS);
        }
        Continue(config)
    }
}

/// Parses one `--set NAME=VALUE`.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}
