//! Malformed and hostile client input: each case gets the protocol's
//! documented error or disconnect code, and a well-behaved bystander keeps
//! receiving every publication throughout.

use std::time::Duration;

use groupcast_client::ClientError;
use groupcast_testkit::{Client, TestServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// What the server must do with an input.
#[derive(Debug)]
enum Expect {
    /// Close the connection with this code.
    Close(u16),
    /// Reply to command `id` with this error code; connection stays usable.
    Error(u32, u64),
    /// Accept: reply to command `id` without error (harmless input).
    Accept(u32),
}

enum Input {
    Text(String),
    Binary(Vec<u8>),
}

struct Case {
    what: &'static str,
    /// Send `connect` first.
    connected: bool,
    input: Input,
    expect: Expect,
}

fn text(s: impl Into<String>) -> Input {
    Input::Text(s.into())
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let c = |what, connected, input, expect| Case {
        what,
        connected,
        input,
        expect,
    };
    vec![
        c("not JSON", true, text("hello"), Close(3501)),
        c(
            "truncated JSON",
            true,
            text(r#"{"id":1,"subscribe":{"#),
            Close(3501),
        ),
        c("JSON array", true, text("[1,2,3]"), Close(3501)),
        c("JSON string", true, text(r#""connect""#), Close(3501)),
        c(
            "id is a string",
            true,
            text(r#"{"id":"1","ping":{}}"#),
            Close(3501),
        ),
        c(
            "id negative",
            true,
            text(r#"{"id":-1,"ping":{}}"#),
            Close(3501),
        ),
        c(
            "id huge",
            true,
            text(r#"{"id":99999999999999999999,"ping":{}}"#),
            Close(3501),
        ),
        c(
            "channel is a number",
            true,
            text(r#"{"id":1,"subscribe":{"channel":5}}"#),
            Close(3501),
        ),
        c(
            "offset is a string",
            true,
            text(r#"{"id":1,"subscribe":{"channel":"a","offset":"x"}}"#),
            Close(3501),
        ),
        c(
            "offset negative",
            true,
            text(r#"{"id":1,"subscribe":{"channel":"a","offset":-5}}"#),
            Close(3501),
        ),
        c(
            "subscribe is a string",
            true,
            text(r#"{"id":1,"subscribe":"x"}"#),
            Close(3501),
        ),
        c(
            "one bad line in a batch",
            true,
            text("{\"id\":1,\"ping\":{}}\nnope"),
            Close(3501),
        ),
        c(
            "30k-deep nesting in opaque data",
            true,
            text(format!(
                "{{\"id\":1,\"publish\":{{\"channel\":\"deep\",\"data\":{}{}}}}}",
                "[".repeat(30_000),
                "]".repeat(30_000)
            )),
            Accept(1),
        ),
        c(
            "unknown fields ignored",
            true,
            text(r#"{"id":2,"ping":{"x":1},"flag":9,"headers":{"a":"b"}}"#),
            Accept(2),
        ),
        c(
            "huge offset",
            true,
            text(
                r#"{"id":3,"subscribe":{"channel":"h","recover":true,"offset":18446744073709551615,"epoch":"x"}}"#,
            ),
            Accept(3),
        ),
        c(
            "binary frame",
            true,
            Input::Binary(vec![0, 1, 2, 255]),
            Close(3501),
        ),
        c(
            "command without id",
            true,
            text(r#"{"subscribe":{"channel":"a"}}"#),
            Close(3501),
        ),
        c(
            "command before connect",
            false,
            text(r#"{"id":1,"subscribe":{"channel":"a"}}"#),
            Close(3501),
        ),
        c(
            "ping before connect",
            false,
            text(r#"{"id":1,"ping":{}}"#),
            Close(3501),
        ),
        c(
            "duplicate connect",
            true,
            text(r#"{"id":7,"connect":{}}"#),
            Close(3501),
        ),
        c(
            "invalid token",
            false,
            text(r#"{"id":1,"connect":{"token":"x.y.z"}}"#),
            Close(3500),
        ),
        c(
            "oversized frame",
            true,
            text(format!(
                r#"{{"id":1,"publish":{{"channel":"a","data":"{}"}}}}"#,
                "x".repeat(70_000)
            )),
            Close(1009),
        ),
        c(
            "unknown method",
            true,
            text(r#"{"id":3,"nope":{}}"#),
            Error(3, 104),
        ),
        c(
            "empty channel",
            true,
            text(r#"{"id":4,"subscribe":{"channel":""}}"#),
            Error(4, 107),
        ),
        c(
            "unknown namespace",
            true,
            text(r#"{"id":5,"subscribe":{"channel":"zz:top"}}"#),
            Error(5, 102),
        ),
        c(
            "channel too long",
            true,
            text(format!(
                r#"{{"id":6,"subscribe":{{"channel":"{}"}}}}"#,
                "c".repeat(300)
            )),
            Error(6, 107),
        ),
        c(
            "publish without data",
            true,
            text(r#"{"id":8,"publish":{"channel":"a"}}"#),
            Error(8, 107),
        ),
        c(
            "history without subscribing",
            true,
            text(r#"{"id":9,"history":{"channel":"a","limit":100000}}"#),
            Error(9, 103),
        ),
        c(
            "presence unsubscribed",
            true,
            text(r#"{"id":10,"presence":{"channel":"a"}}"#),
            Error(10, 103),
        ),
        c(
            "sub_refresh unsubscribed",
            true,
            text(r#"{"id":11,"sub_refresh":{"channel":"a","token":"x"}}"#),
            Error(11, 103),
        ),
        c(
            "rpc",
            true,
            text(r#"{"id":12,"rpc":{"method":"m"}}"#),
            Error(12, 108),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_harms_no_one() {
    let s = TestServer::start().await;
    let mut bystander = s.client("bystander").await;
    let r = bystander
        .command("subscribe", json!({"channel":"watch"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some());
    let mut published = 0u64;
    for case in cases() {
        let mut c = Client::open(&s.ws_url()).await.unwrap();
        if case.connected {
            let r = c
                .command("connect", json!({"token": s.token("mallory", json!({}))}))
                .await
                .unwrap();
            assert!(r.get("connect").is_some());
        }
        match case.input {
            Input::Text(t) => c.send_text(t).await.unwrap(),
            Input::Binary(b) => c.send_binary(b).await.unwrap(),
        }
        match case.expect {
            Expect::Close(code) => {
                let got = c
                    .closed(T)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                assert_eq!(
                    got.as_ref().map(|c| c.0),
                    Some(code),
                    "{}: {got:?}",
                    case.what
                );
                assert!(
                    got.is_some_and(|(_, reason)| !reason.is_empty()),
                    "{}: close reason",
                    case.what
                );
            }
            Expect::Accept(id) => {
                let r = c
                    .reply(id)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                assert!(r.get("error").is_none(), "{}: {r}", case.what);
            }
            Expect::Error(id, code) => {
                let r = c
                    .reply(id)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                assert_eq!(r["error"]["code"], code, "{}: {r}", case.what);
                let r = c.command("ping", json!({})).await.unwrap();
                assert_eq!(
                    r["ping"],
                    json!({}),
                    "{}: connection still usable",
                    case.what
                );
            }
        }
        // The bystander still gets every publication, in order.
        published += 1;
        s.api("publish", json!({"channel":"watch","data":{"n":published}}))
            .await;
        let p = loop {
            let p = bystander.push(T).await.unwrap();
            if p.get("pub").is_some() {
                break p;
            }
        };
        assert_eq!(
            p["pub"]["data"]["n"], published,
            "bystander after {}",
            case.what
        );
    }
}

#[tokio::test]
async fn stale_connection_without_connect_is_closed() {
    let mut config = TestServer::dev_config();
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let s = TestServer::start_with(config).await;
    let mut c = Client::open(&s.ws_url()).await.unwrap();
    let code = c.closed(T).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3502));
}

#[tokio::test]
async fn missing_pong_disconnects() {
    let mut config = TestServer::dev_config();
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await;
    c.auto_pong = false;
    let code = c.closed(T).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3012));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_and_publisher_unaffected() {
    let mut config = TestServer::dev_config();
    config.client.max_queue_bytes = 256 * 1024;
    let s = TestServer::start_with(config).await;
    // Subscribes, then never reads again.
    let mut slow = s.client("slow").await;
    slow.command("subscribe", json!({"channel":"flood"}))
        .await
        .unwrap();
    let mut fast = s.client("fast").await;
    fast.command("subscribe", json!({"channel":"flood"}))
        .await
        .unwrap();
    let blob: Value = json!("z".repeat(60_000));
    // 600 x 60 KB = 36 MB: more than loopback socket buffers can hold.
    let total = 600;
    for i in 0..total {
        let (status, _) = s
            .api(
                "publish",
                json!({"channel":"flood","data":{"i":i,"p":blob}}),
            )
            .await;
        assert_eq!(status, 200);
        // The fast reader keeps up and gets every publication in order.
        loop {
            let p = fast.push(T).await.unwrap();
            if p.get("pub").is_some() {
                assert_eq!(p["pub"]["data"]["i"], i);
                break;
            }
        }
    }
    // The slow one was cut off. Its socket buffers are full, so the close
    // frame may not fit: it sees 3008 or a bare close after its backlog.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match slow.next(Duration::from_secs(5)).await {
            Ok(groupcast_testkit::Incoming::Close(code)) => {
                assert!(matches!(code, None | Some((3008, _))), "{code:?}");
                break;
            }
            Ok(_) => {}
            Err(ClientError::Timeout) => panic!("slow reader was not disconnected"),
            Err(e) => panic!("{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow reader was not disconnected"
        );
    }
    let (_, metrics) = s.http_raw("GET", "/metrics", "", b"").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("groupcast_disconnects_total{code=\"3008\"}")),
        "slow disconnect counted"
    );
}
