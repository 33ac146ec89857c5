//! The `Origin` checks on WebSocket upgrades, over real requests (raw
//! HTTP/1.1, so `Host` and `Origin` are exactly what a browser, or an
//! attacker's page, would send):
//!
//! * relay routes without `allowed_origins` (same origin): scheme, host and
//!   port are compared, a DNS name present in both `Origin` and `Host`
//!   (DNS rebinding) is not "same", `client.public_origins` defines the
//!   deployment's origins (what a deployment behind TLS termination sets),
//!   and a TLS listener's same origin is `https`;
//! * `client.allowed_origins` patterns match canonical, well-formed
//!   origins only;
//! * the settings are checked at start, errors naming the key.

use std::sync::Arc;

use groupcast_edge::config::RouteConfig;
use groupcast_edge::Config;
use groupcast_testkit::TestServer;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The status of a WebSocket upgrade `GET path` with these `Host` and
/// `Origin` headers.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> u16 {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed early");
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("an answer");
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"))
}

async fn plain(s: &TestServer, path: &str, host: &str, origin: Option<&str>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    upgrade(tcp, path, host, origin).await
}

/// The dev profile with a relay route that sets no `allowed_origins`
/// (its target is unreachable without NATS: the upgrade is answered
/// first, which is what is tested here).
fn with_route() -> Config {
    let mut config = TestServer::dev_config();
    config.relay.routes.push(RouteConfig {
        path: "/ws/echo/{room}/".into(),
        target: "echo.{room}".into(),
        ..Default::default()
    });
    config
}

const ROUTE: &str = "/ws/echo/lobby/";

/// Upgrades `(origin, host, expected status)` on `path`; every case that
/// answers otherwise, listed.
async fn check<F, Fut>(cases: &[(Option<&str>, &str, u16)], upgrade: F) -> Vec<String>
where
    F: Fn(Option<String>, String) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let mut wrong = Vec::new();
    for (origin, host, want) in cases {
        let got = upgrade(origin.map(String::from), host.to_string()).await;
        if got != *want {
            wrong.push(format!(
                "Origin {origin:?}, Host {host:?}: {got}, expected {want}"
            ));
        }
    }
    wrong
}

#[tokio::test]
async fn same_origin_compares_scheme_host_and_port_and_refuses_rebinding() {
    let s = TestServer::start_with(with_route()).await;
    let port = s.addr.port();
    let own = format!("127.0.0.1:{port}");
    let local = format!("localhost:{port}");
    let rebound = format!("rebind.evil.test:{port}");
    let o = |text: &str| text.replace("PORT", &port.to_string());
    let (http_own, http_local, http_upper) = (
        o("http://127.0.0.1:PORT"),
        o("http://localhost:PORT"),
        o("HTTP://LOCALHOST:PORT"),
    );
    let (https_own, ftp_own, rebinding) = (
        o("https://127.0.0.1:PORT"),
        o("ftp://127.0.0.1:PORT"),
        o("http://rebind.evil.test:PORT"),
    );
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let (no_scheme, path, user, bad_port) = (
        o("127.0.0.1:PORT"),
        o("http://127.0.0.1:PORT/"),
        o("http://user@127.0.0.1:PORT"),
        o("http://127.0.0.1:PORTx"),
    );
    let cases: &[(Option<&str>, &str, u16)] = &[
        // Legitimate: no Origin (not a browser), the page's own origin.
        (None, &own, 101),
        (Some(&http_own), &own, 101),
        (Some(&http_local), &local, 101),
        (Some(&http_upper), &local, 101),
        // The scheme is not the listener's (plain TCP: http).
        (Some(&https_own), &own, 403),
        (Some(&ftp_own), &own, 403),
        // A DNS name in both headers is what a rebinding page sends.
        (Some(&rebinding), &rebound, 403),
        // Another port, or the default one.
        (Some(&other_port), &own, 403),
        (Some("http://127.0.0.1"), &own, 403),
        // `null` and malformed values.
        (Some("null"), &own, 403),
        (Some(&no_scheme), &own, 403),
        (Some(&path), &own, 403),
        (Some(&user), &own, 403),
        (Some(&bad_port), &own, 403),
    ];
    let wrong = check(cases, |origin, host| {
        let s = &s;
        async move { plain(s, ROUTE, &host, origin.as_deref()).await }
    })
    .await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What a deployment served at a DNS name, behind a proxy that terminates
/// TLS, sets: `client.public_origins`. Same origin then means one of
/// them, whatever the `Host` the proxy passes on.
#[tokio::test]
async fn public_origins_are_the_same_origin_behind_tls_termination() {
    let mut config = with_route();
    config.client.public_origins = vec!["https://chat.example.com".into()];
    let s = TestServer::start_with(config).await;
    let own = s.addr.to_string();
    let own_origin = format!("http://{own}");
    let public = "chat.example.com";
    let cases: &[(Option<&str>, &str, u16)] = &[
        (Some("https://chat.example.com"), public, 101),
        // The Host a proxy passes on does not matter.
        (Some("https://chat.example.com"), &own, 101),
        (Some("https://Chat.Example.com:443"), public, 101),
        // Another scheme, port or host, even where Host agrees.
        (Some("http://chat.example.com"), public, 403),
        (
            Some("https://chat.example.com:8443"),
            "chat.example.com:8443",
            403,
        ),
        (Some("http://rebind.evil.test"), "rebind.evil.test", 403),
        // With public origins set, the listener's own address is not one.
        (Some(&own_origin), &own, 403),
        (Some("null"), public, 403),
    ];
    let wrong = check(cases, |origin, host| {
        let s = &s;
        async move { plain(s, ROUTE, &host, origin.as_deref()).await }
    })
    .await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A TLS listener: the same origin is `https`.
#[tokio::test]
async fn tls_listener_same_origin_is_https() {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("gc-origins-{:x}", rand_id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
    let mut config = with_route();
    config.tls.cert_file = dir.join("cert.pem").display().to_string();
    config.tls.key_file = dir.join("key.pem").display().to_string();
    let s = TestServer::start_with(config).await;

    let der: CertificateDer<'static> = c.cert.der().clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let port = s.addr.port();
    let host = format!("localhost:{port}");
    let (https, http) = (
        format!("https://localhost:{port}"),
        format!("http://localhost:{port}"),
    );
    let cases: &[(Option<&str>, &str, u16)] = &[
        (Some(&https), &host, 101),
        // An http page is not this https origin.
        (Some(&http), &host, 403),
    ];
    let wrong = check(cases, |origin, host| {
        let (connector, addr) = (connector.clone(), s.addr);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stream = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            upgrade(stream, ROUTE, &host, origin.as_deref()).await
        }
    })
    .await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `client.allowed_origins` on `/ws/relay/` and `/connection/websocket`:
/// patterns over the canonical origin, which must be well-formed.
#[tokio::test]
async fn allowed_origins_match_well_formed_origins_only() {
    let mut config = TestServer::dev_config();
    config.client.allowed_origins =
        vec!["https://*.example.com".into(), "http://localhost:*".into()];
    let s = TestServer::start_with(config).await;
    let host = s.addr.to_string();
    let cases: &[(Option<&str>, &str, u16)] = &[
        (None, &host, 101),
        (Some("https://app.example.com"), &host, 101),
        (Some("https://APP.example.com:443"), &host, 101),
        (Some("http://localhost:3000"), &host, 101),
        (Some("http://app.example.com"), &host, 403),
        (Some("https://app.example.com:8443"), &host, 403),
        (Some("https://evil.test/.example.com"), &host, 403),
        (Some("https://evil.test?.example.com"), &host, 403),
        (Some("https://evil.test#.example.com"), &host, 403),
        (Some("https://evil.test:1.example.com"), &host, 403),
        (Some("http://localhost"), &host, 403),
        (Some("null"), &host, 403),
    ];
    let mut wrong = Vec::new();
    for path in ["/ws/relay/relay", "/connection/websocket"] {
        let found = check(cases, |origin, host| {
            let s = &s;
            async move { plain(s, path, &host, origin.as_deref()).await }
        })
        .await;
        wrong.extend(found.into_iter().map(|w| format!("{path}: {w}")));
    }
    // `["*"]` (the dev profile): any Origin, `null` included.
    let s = TestServer::start().await;
    let host = s.addr.to_string();
    let any: &[(Option<&str>, &str, u16)] = &[
        (Some("null"), &host, 101),
        (Some("https://anything.test"), &host, 101),
    ];
    let found = check(any, |origin, host| {
        let s = &s;
        async move { plain(s, "/ws/relay/relay", &host, origin.as_deref()).await }
    })
    .await;
    wrong.extend(found.into_iter().map(|w| format!("[\"*\"]: {w}")));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn origin_settings_are_checked_at_start_naming_the_key() {
    let err = |edit: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        edit(&mut c);
        c.validate().expect_err("invalid")
    };
    let e = err(&|c| c.client.allowed_origins = vec!["app.example.com".into()]);
    assert!(
        e.starts_with("client.allowed_origins[0]: ")
            && e.contains("scheme")
            && e.contains("\"https://app.example.com\""),
        "{e}"
    );
    let e = err(&|c| c.client.allowed_origins = vec!["*.example.com".into()]);
    assert!(e.starts_with("client.allowed_origins[0]: "), "{e}");
    let e = err(&|c| {
        c.client.allowed_origins = vec!["https://ok.example".into(), "https://a.example/".into()]
    });
    assert!(e.starts_with("client.allowed_origins[1]: "), "{e}");
    let e = err(&|c| c.client.allowed_origins = vec![String::new()]);
    assert!(e.starts_with("client.allowed_origins[0]: empty"), "{e}");
    for bad in [
        "chat.example.com",
        "https://*.example.com",
        "https://chat.example.com/app",
        "ftp://chat.example.com",
        "null",
    ] {
        let e = err(&|c| c.client.public_origins = vec![bad.into()]);
        assert!(e.starts_with("client.public_origins[0]: "), "{bad}: {e}");
    }
    let e = err(&|c| {
        c.relay.routes.push(RouteConfig {
            path: "/ws/x/".into(),
            target: "x".into(),
            allowed_origins: vec!["https://a.example".into(), "a.example".into()],
            ..Default::default()
        })
    });
    assert!(e.starts_with("relay.routes[0].allowed_origins[1]: "), "{e}");

    let mut ok = Config::default();
    ok.client.allowed_origins = vec![
        "*".into(),
        "https://*.example.com".into(),
        "http://localhost:*".into(),
        "capacitor://localhost".into(),
    ];
    ok.client.public_origins = vec![
        "https://chat.example.com".into(),
        "http://10.0.0.5:8000".into(),
        "http://[::1]:8000".into(),
    ];
    ok.validate().unwrap();
}

fn rand_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ u64::from(std::process::id()) << 32
}
