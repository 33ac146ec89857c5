//! TLS on the listener with a real TLS client (rustls): WebSocket and HTTP
//! API over TLS, certificate reload on file change, a failed reload keeps
//! the served certificate, and plain-text clients are refused harmlessly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use groupcast_testkit::{TestServer, API_KEY};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Pair {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pair {
        cert_pem: c.cert.pem(),
        key_pem: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(dir: &Path, pair: &Pair) {
    // Write then rename, as cert managers do, so a reload never sees half a file.
    for (name, body) in [("cert.pem", &pair.cert_pem), ("key.pem", &pair.key_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn connector(trusted: &[&Pair]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for p in trusted {
        roots.add(p.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    s: &TestServer,
    c: &TlsConnector,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn served_cert(s: &TestServer, c: &TlsConnector) -> CertificateDer<'static> {
    let t = tls_stream(s, c).await;
    t.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// `groupcast_tls_reloads_total{outcome}` of the server in this process
/// (its /metrics speaks TLS only).
fn reloads(outcome: &str) -> f64 {
    let line = format!("groupcast_tls_reloads_total{{outcome=\"{outcome}\"}} ");
    groupcast_edge::metrics::install()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls (bounded) until the server serves `want` to new handshakes.
async fn serves(s: &TestServer, c: &TlsConnector, want: &CertificateDer<'static>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if served_cert(s, c).await == *want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A TLS server on its own certificate directory: it serves pair `a`;
/// `b` is ready to swap in; the client trusts both.
struct Fixture {
    dir: Dir,
    a: Pair,
    b: Pair,
    s: TestServer,
    trusting: TlsConnector,
}

impl Fixture {
    async fn start(reload_interval: Duration) -> Fixture {
        let dir = Dir(std::env::temp_dir().join(format!("gc-tls-{:x}", rand_id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let (a, b) = (self_signed(), self_signed());
        write(&dir.0, &a);
        let mut config = TestServer::dev_config();
        config.tls.cert_file = dir.0.join("cert.pem").display().to_string();
        config.tls.key_file = dir.0.join("key.pem").display().to_string();
        config.tls.reload_interval = Some(reload_interval);
        let s = TestServer::start_with(config).await;
        let trusting = connector(&[&a, &b]);
        Fixture {
            dir,
            a,
            b,
            s,
            trusting,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_api_over_tls_with_reload() {
    let Fixture {
        dir,
        a,
        b,
        s,
        trusting,
    } = Fixture::start(Duration::from_millis(100)).await;

    // The Centrifugo protocol over wss.
    let stream = tls_stream(&s, &trusting).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async("wss://localhost/connection/websocket", stream)
            .await
            .unwrap();
    let connect = json!({"id":1,"connect":{"token": s.token("alice", json!({}))}});
    ws.send(Message::text(connect.to_string())).await.unwrap();
    let reply = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    // The server API over https.
    let mut t = tls_stream(&s, &trusting).await;
    let body = json!({"channel":"news","data":{"x":1}}).to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    t.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = t.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""offset":1"#), "{resp}");

    // Plain HTTP to the TLS port gets nowhere, and harms nothing.
    let mut plain = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "no plain-text answer"
    );

    // Reload: new handshakes get the new certificate.
    assert_eq!(served_cert(&s, &trusting).await, a.der);
    write(&dir.0, &b);
    assert!(
        serves(&s, &trusting, &b.der).await,
        "certificate was not reloaded"
    );
    // The open WebSocket from before the reload still works.
    ws.send(Message::text(json!({"id":2,"ping":{}}).to_string()))
        .await
        .unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert!(pong.to_text().unwrap().contains(r#""id":2"#), "{pong:?}");

    // A broken file is not served: the last good pair stays (checked once
    // the server tried it and counted the failed reload).
    let failed = reloads("error");
    std::fs::write(dir.0.join("key.pem"), "not a key").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reloads("error") <= failed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken key was not tried within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_cert(&s, &trusting).await,
        b.der,
        "kept the last good certificate"
    );
}

#[tokio::test]
async fn bad_tls_files_fail_at_start_naming_the_key() {
    let mut config = TestServer::dev_config();
    config.tls.cert_file = "/nonexistent/cert.pem".into();
    config.tls.key_file = "/nonexistent/key.pem".into();
    let e = groupcast_edge::check_config(&config).unwrap_err();
    assert!(e.contains("tls.cert_file"), "{e}");
    config.tls.key_file = String::new();
    let e = groupcast_edge::check_config(&config).unwrap_err();
    assert!(e.contains("tls"), "{e}");
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// SIGHUP reloads at once (the file check interval is an hour here). Each
/// nextest test is its own process, so the signal reaches only this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let Fixture {
        dir,
        a,
        b,
        s,
        trusting,
    } = Fixture::start(Duration::from_secs(3600)).await;
    assert_eq!(served_cert(&s, &trusting).await, a.der);
    // The server installs its SIGHUP handler in its reload task, on that
    // task's own time. This test's handler keeps a SIGHUP that comes
    // earlier from ending the process; the signal is repeated until the
    // server counts a (forced) reload of the unchanged files, which proves
    // it listens.
    let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let pid = std::process::id().to_string();
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    let before = reloads("ok");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reloads("ok") <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not reload on SIGHUP within 20 s"
        );
        hup();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_cert(&s, &trusting).await, a.der, "same files");
    write(&dir.0, &b);
    hup();
    assert!(
        serves(&s, &trusting, &b.der).await,
        "SIGHUP did not reload the certificate"
    );
}

/// On a TLS listener the deadlines count from the TCP accept: a socket
/// that never sends its ClientHello is closed at `first_byte_timeout`, one
/// whose handshake does not finish at `request_head_timeout`; a real TLS
/// client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_tls_handshakes_are_cut() {
    let dir = Dir(std::env::temp_dir().join(format!("gc-tls-{:x}", rand_id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let a = self_signed();
    write(&dir.0, &a);
    let mut config = TestServer::dev_config();
    config.tls.cert_file = dir.0.join("cert.pem").display().to_string();
    config.tls.key_file = dir.0.join("key.pem").display().to_string();
    config.client.first_byte_timeout = Duration::from_millis(300);
    config.client.request_head_timeout = Duration::from_secs(1);
    let s = TestServer::start_with(config).await;

    let silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The first bytes of a TLS record header, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert_eq!(served_cert(&s, &connector(&[&a])).await, a.der);
    for (what, mut sock) in [("silent", silent), ("stalled", stalled)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "{what} handshake still open: {closed:?}"
        );
    }
    // The server runs in this process: read its metrics directly (its
    // /metrics speaks TLS only).
    let text = groupcast_edge::metrics::install().render();
    for stage in ["first_byte", "request_head"] {
        let line = format!("groupcast_handshake_timeouts_total{{stage=\"{stage}\"}} ");
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "{stage} counted:\n{text}"
        );
    }
}
