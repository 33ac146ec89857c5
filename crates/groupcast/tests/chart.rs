//! The Helm chart and the binary agree: the `groupcast.toml` the chart
//! renders from its values (`helm/groupcast/templates/configmap.yaml`) is
//! what `groupcast` accepts, for the default values and for values that
//! use every kind of setting (numbers, durations, lists, namespaces, event
//! proxies, webhooks). A setting the binary refuses is refused naming it.
//! Needs Helm in `.tools/bin` (scripts/test.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use groupcast_testkit::dev::DevServer;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The chart's `groupcast.toml` for `sets` (helm `--set`/`--set-json`
/// arguments), written to a temp file.
fn rendered(sets: &[&str], name: &str) -> PathBuf {
    let helm = repo_file(".tools/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/helm-tool.sh (scripts/test.sh does)",
        helm.display()
    );
    let out = Command::new(&helm)
        .args(["template", "gc"])
        .arg(repo_file("helm/groupcast"))
        .args(["--kube-version", "1.33.0", "-s", "templates/configmap.yaml"])
        .args(sets)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let body: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "groupcast.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect();
    assert!(body.len() > 5, "no groupcast.toml in {yaml}");
    let path = std::env::temp_dir().join(format!("gc-chart-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, body.join("\n")).unwrap();
    path
}

/// The chart's secrets reach edges through the environment (edge.yaml):
/// the API key, the token secret, the NATS cluster secret, user and
/// password.
const ENV: &[(&str, &str)] = &[
    ("GROUPCAST_API__KEY", "k"),
    ("GROUPCAST_CLIENT__TOKEN_HMAC_SECRET", "s"),
    ("GROUPCAST_NATS__CLUSTER_SECRET", "c"),
    ("GROUPCAST_NATS__USER", "edge"),
    ("GROUPCAST_NATS__PASSWORD", "p"),
];

#[test]
fn the_config_the_chart_renders_is_what_the_binary_accepts() {
    let sets: [(&str, Vec<&str>); 2] = [
        ("defaults", vec![]),
        (
            "everything",
            vec![
                "--set-json",
                r#"config.namespaces=[{"name":"chat","history_size":50,"history_ttl":"1h","allow_recovery":true,"presence":true,"join_leave":true,"subscribe_proxy":"app"}]"#,
                "--set-json",
                r#"config.proxies=[{"name":"app","endpoint":"http://app:8000/centrifugo","timeout":"1500ms","http_headers":["Cookie"]}]"#,
                "--set-json",
                r#"config.webhooks=[{"url":"http://app:8000/hooks","secret":"w","batch_max":10}]"#,
                "--set",
                "config.client.connect_proxy=app",
                "--set",
                "config.client.max_connections_per_user=8",
                "--set-json",
                r#"config.client.allowed_origins=["https://a.example","https://b.example"]"#,
                "--set",
                "config.dashboard.enabled=false",
                "--set",
                "config.api.over_nats=true",
                "--set",
                "config.api.max_body_bytes=65536",
            ],
        ),
    ];
    for (name, set) in sets {
        let config = rendered(&set, name);
        let c = config.to_str().unwrap();
        let server = DevServer::start(BIN, &["--listen", "127.0.0.1:0", "--config", c], ENV);
        assert!(server.field("client URL").starts_with("ws://"), "{name}");
        drop(server);
        let _ = std::fs::remove_file(&config);
    }

    // Values the schema cannot judge reach the binary, which names them.
    let config = rendered(&["--set", "config.channel.history_replicas=9"], "bad");
    let out = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .envs(ENV.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history_replicas"), "{err}");
}
