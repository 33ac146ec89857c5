//! Loading and validation: layering, key names in errors, service links.

use super::*;
use serde_json::json;

fn write(toml: &str) -> tempfile_lite::TempFile {
    tempfile_lite::TempFile::new(toml)
}

/// Minimal temp file helper (no extra dependency).
mod tempfile_lite {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn new(content: &str) -> TempFile {
            let p =
                std::env::temp_dir().join(format!("gc-config-{:x}.toml", rand::random::<u64>()));
            std::fs::write(&p, content).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn none() -> Serialized<serde_json::Value> {
    Serialized::defaults(json!({}))
}

#[test]
fn file_overrides_defaults_and_flags_override_file() {
    let f = write(
        r#"
listen = "127.0.0.1:9001"
[client]
ping_interval = "10s"
pong_timeout = "3s"
[[namespaces]]
name = "chat"
presence = true
join_leave = true
"#,
    );
    let c = Config::load(Config::dev(), Some(&f.0), none()).unwrap();
    assert_eq!(c.listen.port(), 9001);
    assert_eq!(c.client.ping_interval, Duration::from_secs(10));
    assert!(c.namespaces[0].options.join_leave);
    let c = Config::load(
        Config::dev(),
        Some(&f.0),
        Serialized::defaults(json!({"listen":"127.0.0.1:9002"})),
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9002);
}

/// `--config a.toml --config b.toml`: b's keys win, tables merge key by key,
/// an array of tables is replaced whole, and a missing file is named.
#[test]
fn later_files_layer_over_earlier_ones() {
    let base = write(
        r#"
listen = "127.0.0.1:9001"
[client]
ping_interval = "10s"
pong_timeout = "3s"
[[namespaces]]
name = "status"
presence = true
"#,
    );
    let example = write(
        r#"
[client]
pong_timeout = "4s"
[[namespaces]]
name = "game"
presence = true
join_leave = true
"#,
    );
    let c = Config::load_files(Config::dev(), &[&base.0, &example.0], none()).unwrap();
    assert_eq!(c.listen.port(), 9001);
    assert_eq!(c.client.ping_interval, Duration::from_secs(10));
    assert_eq!(c.client.pong_timeout, Duration::from_secs(4));
    let names: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["game"]);
    let missing = Path::new("/nonexistent-layer.toml");
    let e = Config::load_files(Config::dev(), &[base.0.as_path(), missing], none()).unwrap_err();
    assert!(e.contains("/nonexistent-layer.toml"), "{e}");
}

/// The example in docs/configuration.md is a valid configuration.
#[test]
fn documented_example_loads() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let start = doc.find("```toml\n").expect("a toml example in the doc") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let f = write(&doc[start..end]);
    let c = Config::load(Config::default(), Some(&f.0), none()).unwrap();
    assert!(!c.namespaces.is_empty(), "the example shows namespaces");
}

#[test]
fn numeric_looking_secrets_are_text() {
    let f = write("name = 7\n[api]\nkey = 123456\n[client]\ntoken_hmac_secret = 42\n");
    let c = Config::load(Config::dev(), Some(&f.0), none()).unwrap();
    assert_eq!((c.name.as_str(), c.api.key.as_str()), ("7", "123456"));
    assert_eq!(c.client.token_hmac_secret, "42");
}

/// `[membership]` (and the NATS start-up bound) are checked at start,
/// each error naming its key; without seeds nothing else is required.
#[test]
fn membership_settings_are_checked_naming_the_key() {
    let refused = |toml: &str, key: &str| {
        let f = write(toml);
        let e = Config::load(Config::default(), Some(&f.0), none()).unwrap_err();
        assert!(e.contains(key), "{toml}: {e}");
    };
    let seeds = "[membership]\nseeds = [\"127.0.0.1:7501\"]\n";
    refused(seeds, "membership.certs");
    refused(
        "[membership]\nseeds = [\"no-port\"]\ncerts = \"c\"\n",
        "membership.seeds[0]",
    );
    refused(
        &format!("{seeds}certs = \"c\"\nlease_ttl = \"4s\"\nrenew_interval = \"3s\"\n"),
        "membership.renew_interval",
    );
    refused(
        &format!("{seeds}certs = \"c\"\nlease_ttl = \"500ms\"\n"),
        "membership.lease_ttl",
    );
    refused(
        &format!("{seeds}certs = \"c\"\nrequest_timeout = \"0s\"\n"),
        "membership.request_timeout",
    );
    refused(
        &format!("{seeds}certs = \"c\"\nbuffer_max = 0\n"),
        "membership.buffer_max",
    );
    refused(
        "[membership]\npresence_max_clients = 0\n",
        "membership.presence_max_clients",
    );
    refused("[membership]\nbogus = 1\n", "bogus");
    refused("name = \"\"\n", "name");
    refused("[nats]\nstartup_timeout = \"0s\"\n", "nats.startup_timeout");
    let f = write(&format!("{seeds}certs = \"/etc/groupcast/certs\"\n"));
    let c = Config::load(Config::default(), Some(&f.0), none()).unwrap();
    assert!(c.membership.is_clustered());
    assert_eq!(c.membership.lease_ttl, Duration::from_secs(5));
    let c = Config::load(Config::dev(), None, none()).unwrap();
    assert!(
        !c.membership.is_clustered(),
        "dev needs no membership service"
    );
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    for k in [
        "PORT",
        "SERVICE_HOST",
        "SERVICE_PORT",
        "SERVICE_PORT_HTTP",
        "PORT_8000_TCP",
        "PORT_8000_TCP_PROTO",
        "PORT_8000_TCP_PORT",
        "PORT_8000_TCP_ADDR",
        "MEMBERSHIP_PORT",
        "MEMBERSHIP_SERVICE_HOST",
        "MEMBERSHIP_SERVICE_PORT_QUIC",
        "MEMBERSHIP_PORT_7501_UDP_ADDR",
        "NATS_PORT_4222_TCP",
    ] {
        assert!(is_service_link(k), "{k} is a service link");
    }
    for k in [
        "LISTEN",
        "NAME",
        "CLIENT__PING_INTERVAL",
        "MEMBERSHIP__SEEDS",
        "NATS__URLS",
        "API__KEY",
        "BIN",
        "PORT_X_TCP",
        "PORT_8000_HTTP",
        "PORT_8000_TCP_HOST",
    ] {
        assert!(!is_service_link(k), "{k} is not a service link");
    }
}

#[test]
fn errors_name_the_key() {
    // The error a configuration file with `toml` (on the dev profile) gives.
    let refused = |toml: &str| {
        let f = write(toml);
        Config::load(Config::dev(), Some(&f.0), none()).unwrap_err()
    };
    let e = refused("[client]\nping_interval = 5\n");
    assert!(e.contains("ping_interval"), "{e}");
    let e = refused("[client]\nnot_a_key = 1\n");
    assert!(e.contains("not_a_key"), "{e}");
    let e = refused("[[namespaces]]\nname = \"x\"\nhistory_size = 10\n");
    assert!(
        e.contains("namespaces[0]") && e.contains("history_ttl"),
        "{e}"
    );
    let e = refused("[[namespaces]]\nname = \"x\"\nbogus = true\n");
    assert!(e.contains("bogus"), "{e}");
    let e = refused("[client]\npong_timeout = \"30s\"\n");
    assert!(e.contains("client.pong_timeout"), "{e}");
    let e = refused("[[namespaces]]\nname = \"chat\"\nmax_publication_size = 70000\n");
    assert!(
        e.contains("namespace \"chat\": max_publication_size")
            && e.contains("client.max_message_size"),
        "{e}"
    );
    let e = refused("[channel]\nmax_publication_size = 70000\n");
    assert!(e.contains("channel.max_publication_size"), "{e}");
    let e = refused("[client]\nfirst_byte_timeout = \"10ms\"\n");
    assert!(e.contains("client.first_byte_timeout"), "{e}");
    let e = refused("[client]\nfirst_byte_timeout = \"5s\"\nrequest_head_timeout = \"2s\"\n");
    assert!(e.contains("client.request_head_timeout"), "{e}");
    let e = refused("[client]\nrate_refusals_window = \"0s\"\n");
    assert!(e.contains("client.rate_refusals_window"), "{e}");
    // Join/leave at scale: each limit named, in a namespace and in [channel].
    let e = refused("[[namespaces]]\nname = \"big\"\njoin_leave_coalesce = \"2s\"\n");
    assert!(
        e.contains("namespaces[0] (big): join_leave_coalesce must be at most 1s"),
        "{e}"
    );
    let e = refused("[[namespaces]]\nname = \"big\"\njoin_leave_max_subscribers = 0\n");
    assert!(
        e.contains("namespaces[0] (big): join_leave_max_subscribers"),
        "{e}"
    );
    let e = refused("[channel]\njoin_leave_coalesce_from = 0\n");
    assert!(e.contains("channel: join_leave_coalesce_from"), "{e}");
    let e = refused("[shutdown]\ndelay = \"10m\"\n");
    assert!(e.contains("shutdown.delay: must be at most 5m"), "{e}");
    let e = refused("[client]\nlisten_backlog = 0\n");
    assert!(
        e.contains("client.listen_backlog: must be 1 to 65535"),
        "{e}"
    );
    let e = refused("[shutdown]\ngrace_period = \"10s\"\ndrain_window = \"10s\"\n");
    assert!(
        e.contains("shutdown.drain_window: must be below shutdown.grace_period"),
        "{e}"
    );
    let e = Config::load(Config::dev(), Some(Path::new("/nonexistent.toml")), none()).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn max_publishes_in_flight_is_bounded_and_named() {
    assert_eq!(Config::dev().client.max_publishes_in_flight, 64);
    for bad in [0, 10_001] {
        let f = write(&format!("[client]\nmax_publishes_in_flight = {bad}\n"));
        let e = Config::load(Config::dev(), Some(&f.0), none()).unwrap_err();
        assert!(
            e.to_string().contains("client.max_publishes_in_flight"),
            "{e}"
        );
    }
    let f = write("[client]\nmax_publishes_in_flight = 1\n");
    let c = Config::load(Config::dev(), Some(&f.0), none()).unwrap();
    assert_eq!(c.client.max_publishes_in_flight, 1);
}

#[test]
fn a_drain_window_spreads_the_batches_over_it() {
    let mut s = ShutdownConfig::default();
    // Without a window: batches of drain_batch_size, whatever the count.
    assert_eq!(s.drain_batches(2500), vec![1000, 1000, 500]);
    assert!(s.drain_batches(0).is_empty());
    // 4 s every 100 ms: 41 batches (0 ms .. 4000 ms), the connections shared evenly.
    s.drain_window = Duration::from_secs(4);
    let b = s.drain_batches(4100);
    assert_eq!((b.len(), b.iter().sum::<usize>()), (41, 4100));
    assert!(b.iter().all(|&n| n == 100), "{b:?}");
    let b = s.drain_batches(100);
    assert_eq!((b.len(), b.iter().sum::<usize>()), (41, 100));
    assert!(b.iter().all(|&n| n == 2 || n == 3), "{b:?}");
    // Fewer connections than batches: one now and then, the last at the window's end.
    let b = s.drain_batches(5);
    assert_eq!(b.iter().sum::<usize>(), 5);
    assert_eq!(b[40], 1, "{b:?}");
    s.drain_batch_interval = Duration::from_secs(1);
    assert_eq!(s.drain_batches(500), vec![100; 5]);
}
