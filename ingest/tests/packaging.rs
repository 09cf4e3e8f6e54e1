//! What can be checked of the container image without a container engine: `hadolint` lints
//! `deploy/docker/Dockerfile` (`deploy/local/hadolint.sh install`; `TEST_HADOLINT` names the
//! binary), and the Dockerfile agrees with the code: it builds what CI builds, copies binaries that
//! exist, pins its base images, and exposes the ports the binaries listen on by default.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn dockerfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/Dockerfile")
}

#[test]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs hadolint: deploy/local/test.sh installs it"
)]
fn the_dockerfile_passes_hadolint() {
    let hadolint = std::env::var("TEST_HADOLINT").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap();
        format!("{home}/.cache/pixelpipe/hadolint-2.15.1/bin/hadolint")
    });
    let out = Command::new(&hadolint)
        .arg("--no-color")
        .arg(dockerfile())
        .output()
        .unwrap_or_else(|e| panic!("{hadolint}: {e} (deploy/local/hadolint.sh install)"));
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_builds_and_exposes_what_the_code_has() {
    let text = std::fs::read_to_string(dockerfile()).unwrap();
    // CI's own build command for the two binaries, locked to Cargo.lock.
    assert!(
        text.contains(
            "cargo build --release --locked -p pixelpipe-ingest -p pixelpipe-sink --bins"
        ),
        "{text}"
    );
    // The copied binaries are the packages' binaries: this package's is known to cargo, the
    // sink's is named in its manifest.
    let ingest_bin = Path::new(env!("CARGO_BIN_EXE_pixelpipe-ingest"));
    assert_eq!(ingest_bin.file_name().unwrap(), "pixelpipe-ingest");
    let sink_manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sink/Cargo.toml"))
            .unwrap();
    assert!(sink_manifest.contains("name = \"pixelpipe-sink\""));
    assert!(text.contains(
        "COPY --from=build /src/target/release/pixelpipe-ingest /src/target/release/pixelpipe-sink /usr/local/bin/"
    ));
    // Every base image is pinned to a version, never a moving tag.
    for line in text.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        let (_, tag) = image
            .split_once(':')
            .unwrap_or_else(|| panic!("{image} has no tag"));
        assert!(
            tag.chars().next().unwrap().is_ascii_digit(),
            "{image}: pin a version"
        );
    }
    // A non-root user, by number (Kubernetes' runAsNonRoot can check a number, not a name).
    assert!(text.contains("\nUSER 10001:10001\n"));
    // The ports the binaries listen on by default.
    let edge = pixelpipe_ingest::Config::default();
    let sink = pixelpipe_sink::SinkConfig::default();
    let exposed = format!(
        "EXPOSE {} {} {}",
        edge.http.listen_addr.port(),
        edge.admin.listen_addr.port(),
        sink.admin.listen_addr.port()
    );
    assert!(text.contains(&exposed), "{exposed}");
}

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

/// `docker-compose -f deploy/compose/docker-compose.yml config` with `env`; (success, output).
fn compose_config(env: &[(&str, &str)]) -> (bool, String) {
    let bin =
        std::env::var("TEST_DOCKER_COMPOSE").unwrap_or_else(|_| "/usr/bin/docker-compose".into());
    let mut cmd = Command::new(&bin);
    cmd.arg("-f")
        .arg(compose_dir().join("docker-compose.yml"))
        .arg("config")
        .env_remove("EDGE_HASH_SECRET")
        .env_remove("CLICKHOUSE_PASSWORD")
        .env_remove("GRAFANA_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (deploy/local/compose.sh install)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs docker-compose: deploy/local/test.sh installs it"
)]
fn the_compose_file_parses_pins_its_images_and_names_files_that_exist() {
    let secrets = [
        ("EDGE_HASH_SECRET", "0123456789abcdef0123"),
        ("CLICKHOUSE_PASSWORD", "test-password"),
        ("GRAFANA_PASSWORD", "test-password"),
    ];
    let (ok, resolved) = compose_config(&secrets);
    assert!(ok, "docker-compose config:\n{resolved}");
    // Secrets are required, never defaulted: without one the file refuses to resolve, naming it.
    let (ok, refused) = compose_config(&secrets[1..]);
    assert!(!ok && refused.contains("EDGE_HASH_SECRET"), "{refused}");

    // Every service: two edges, two sinks, the one-shot topic and migration services and the rest.
    for service in [
        "kafka:",
        "kafka-topics:",
        "clickhouse:",
        "migrate:",
        "sink1:",
        "sink2:",
        "edge1:",
        "edge2:",
        "nginx:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            resolved.contains(&format!("\n  {service}\n")),
            "{service} in\n{resolved}"
        );
    }
    // Every image pinned to a version.
    let text = std::fs::read_to_string(compose_dir().join("docker-compose.yml")).unwrap();
    let images: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert!(images.len() >= 7, "{images:?}");
    for image in images {
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{image}: no tag"));
        let tag = tag.trim_start_matches('v');
        assert!(
            tag.chars().next().unwrap().is_ascii_digit(),
            "{image}: pin a version"
        );
    }
    // Every file a service mounts or builds from is in the repository.
    let mut referenced = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(path) = line
            .strip_prefix("- ./")
            .or_else(|| line.strip_prefix("- ../"))
        {
            let prefix = if line.starts_with("- ./") {
                "./"
            } else {
                "../"
            };
            referenced.push(format!("{prefix}{}", path.split(':').next().unwrap()));
        }
        if let Some(file) = line.strip_prefix("dockerfile: ") {
            referenced.push(format!("../../{file}"));
        }
    }
    assert!(referenced.len() >= 5, "{referenced:?}");
    for path in referenced {
        assert!(
            compose_dir().join(&path).exists(),
            "{path} is referenced but missing"
        );
    }
    // The scrape targets are the ports the binaries listen on once told to (0.0.0.0:9090/9091).
    let scrape = std::fs::read_to_string(compose_dir().join("prometheus.yml")).unwrap();
    assert!(scrape.contains("\"edge1:9090\"") && scrape.contains("\"sink2:9091\""));
    assert!(text.contains("PIXELPIPE_ADMIN__LISTEN_ADDR: 0.0.0.0:9090"));
    assert!(text.contains("PIXELPIPE_ADMIN__LISTEN_ADDR: 0.0.0.0:9091"));
    // Kafka's log on its volume (the image's default is /tmp, lost with the container).
    assert!(
        text.contains("KAFKA_LOG_DIRS: /var/lib/kafka/data")
            && text.contains("- kafka-data:/var/lib/kafka/data")
    );
    // Edges and sinks are given longer than their drain before the engine kills them.
    assert_eq!(
        text.matches("stop_grace_period: 30s").count(),
        3,
        "edge1, edge2 and sink1 (sink2 is sink1's alias)"
    );
    assert!(
        resolved.matches("stop_grace_period: 30s").count() >= 4,
        "{resolved}"
    );
    // The edges believe X-Forwarded-For only from nginx's own address, and nginx replaces it.
    assert!(
        text.contains("PIXELPIPE_HTTP__TRUSTED_PROXIES: 172.28.0.10\n")
            && text.contains("ipv4_address: 172.28.0.10")
    );
    let nginx = std::fs::read_to_string(compose_dir().join("nginx.conf")).unwrap();
    assert!(nginx.contains("proxy_set_header X-Forwarded-For $remote_addr;"));
    // A request retried on the other edge after the first recorded its hit would count twice.
    assert!(nginx.contains("proxy_next_upstream off;"), "{nginx}");
}
