//! Deadlines before the first request (`client.first_byte_timeout`,
//! `client.request_head_timeout`): silent sockets and slowloris request
//! heads are closed at their deadline, counted, and 5,000 of them at once,
//! from four source addresses, do not keep a normal client from connecting
//! or an API call from answering meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use groupcast_testkit::{Client, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FIRST_BYTE: Duration = Duration::from_secs(2);
const REQUEST_HEAD: Duration = Duration::from_secs(4);
/// Per kind: silent sockets, and slowloris heads.
const EACH: usize = 2_500;

async fn open_from(server: SocketAddr, i: usize) -> TcpStream {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % 4) as u8);
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
    sock.connect(server).await.unwrap()
}

/// Waits (bounded by `within`) until the server closed `s`: EOF or reset.
async fn closed_by_server(mut s: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
            Err(_) => return false,
        }
    }
}

async fn metric(s: &TestServer, line: &str) -> f64 {
    let (_, body) = s.http_raw("GET", "/metrics", "", b"").await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_sockets_are_cut_and_harm_no_one() {
    let mut config = TestServer::dev_config();
    config.client.first_byte_timeout = FIRST_BYTE;
    config.client.request_head_timeout = REQUEST_HEAD;
    let s = TestServer::start_with(config).await;
    let opened = Instant::now();
    let mut silent = Vec::with_capacity(EACH);
    let mut slow = Vec::with_capacity(EACH);
    for i in 0..EACH {
        silent.push(open_from(s.addr, i).await);
        let mut c = open_from(s.addr, i).await;
        c.write_all(b"G").await.unwrap();
        slow.push(c);
    }
    // Slowloris: one more byte of the head every 500 ms, never the end.
    let trickle = tokio::spawn(async move {
        let head =
            b"ET /connection/websocket HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut alive = slow;
        for b in head.iter().cycle().take(40) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut still = Vec::with_capacity(alive.len());
            for mut c in alive {
                if c.write_all(&[*b]).await.is_ok() {
                    still.push(c);
                }
            }
            alive = still;
        }
        alive
    });
    eprintln!(
        "{} silent and {EACH} slowloris sockets opened in {:?}",
        EACH,
        opened.elapsed()
    );

    // Meanwhile a normal client connects and subscribes, and the API answers.
    let t = Instant::now();
    let mut c = s.client("normal").await;
    let r = c
        .command("subscribe", json!({"channel":"ok"}))
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{r}");
    let connect = t.elapsed();
    let t = Instant::now();
    let (status, r) = s.api("info", json!({})).await;
    assert_eq!(status, 200, "{r}");
    eprintln!(
        "with 5,000 half-open sockets: connect + subscribe {connect:?}, API info {:?}",
        t.elapsed()
    );

    // Every silent socket is closed (first byte), then every slowloris
    // (head), each well before the test's own bound.
    let bound = REQUEST_HEAD + Duration::from_secs(20);
    let closes = silent
        .into_iter()
        .map(|c| tokio::spawn(closed_by_server(c, bound)));
    for (i, c) in closes.enumerate() {
        assert!(
            c.await.unwrap(),
            "silent socket {i} still open after {bound:?}"
        );
    }
    let silent_done = opened.elapsed();
    let alive = trickle.await.unwrap();
    assert!(
        alive.is_empty(),
        "{} slowloris sockets could still write after 20 s",
        alive.len()
    );
    eprintln!("all silent sockets closed {silent_done:?} after opening started");
    assert!(
        metric(
            &s,
            r#"groupcast_handshake_timeouts_total{stage="first_byte"}"#
        )
        .await
            >= EACH as f64
    );
    assert!(
        metric(
            &s,
            r#"groupcast_handshake_timeouts_total{stage="request_head"}"#
        )
        .await
            >= EACH as f64
    );

    // The normal client was not disturbed, and new ones still connect.
    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}), "{r}");
    let (d, reply) = Client::connect(&s.ws_url(), &s.token("later", json!({})))
        .await
        .unwrap();
    assert!(reply["connect"].is_object(), "{reply}");
    d.close().await;
}

#[tokio::test]
async fn a_request_head_in_time_is_served_even_if_it_came_slowly() {
    let mut config = TestServer::dev_config();
    // The head takes longer than first_byte_timeout (at least 1.5 s: the
    // pauses are lower bounds), well within request_head_timeout however
    // busy the machine.
    config.client.first_byte_timeout = Duration::from_secs(1);
    config.client.request_head_timeout = Duration::from_secs(15);
    let s = TestServer::start_with(config).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for chunk in [
        "GET /hea",
        "lthz HTTP/1.1\r\nHost:",
        " x\r\nConnection: close\r\n",
        "\r\n",
    ] {
        c.write_all(chunk.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
