//! Malformed and hostile client input: each case gets the protocol's
//! documented error or disconnect code, and a well-behaved bystander keeps
//! receiving every publication throughout.

use std::time::Duration;

use groupcast_client::ClientError;
use groupcast_testkit::{Client, RawFrame, TestServer};
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
    /// Before `connect`: reply to command `id` with this error code; the
    /// connection stays open and a valid `connect` then succeeds.
    ErrorThenConnect(u32, u64),
}

enum Input {
    Text(String),
    Binary(Vec<u8>),
    /// Raw frames, in order: (opcode, payload, fin).
    Frames(Vec<(RawFrame, Vec<u8>, bool)>),
}

struct Case {
    what: String,
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
    let c = |what: &str, connected, input, expect| Case {
        what: what.to_string(),
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
            Error(1, 107),
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
        // WebSocket framing abuse.
        c(
            "invalid UTF-8 in a text frame",
            true,
            Input::Frames(vec![(RawFrame::Text, vec![b'{', 0xff, 0xfe, b'}'], true)]),
            Close(3501),
        ),
        c(
            "oversized ping control frame (200 bytes)",
            true,
            Input::Frames(vec![(RawFrame::Ping, vec![b'p'; 200], true)]),
            Close(3501),
        ),
        c(
            "continuation without a first fragment",
            true,
            Input::Frames(vec![(RawFrame::Continuation, b"{}".to_vec(), true)]),
            Close(3501),
        ),
        c(
            "fragmented message over the size limit",
            true,
            Input::Frames(
                (0..5)
                    .map(|i| {
                        (
                            if i == 0 {
                                RawFrame::Text
                            } else {
                                RawFrame::Continuation
                            },
                            vec![b' '; 20_000],
                            i == 4,
                        )
                    })
                    .collect(),
            ),
            Close(1009),
        ),
        c(
            "fragmented command under the limit",
            true,
            Input::Frames(vec![
                (RawFrame::Text, br#"{"id":21,"#.to_vec(), false),
                (RawFrame::Continuation, br#""ping":{}}"#.to_vec(), true),
            ]),
            Accept(21),
        ),
        c(
            "binary fragment then text",
            true,
            Input::Frames(vec![
                (RawFrame::Binary, vec![1], false),
                (RawFrame::Text, vec![b'x'], true),
            ]),
            Close(3501),
        ),
        // Numbers and types.
        c(
            "number out of range for limit",
            true,
            text(r#"{"id":1,"history":{"channel":"a","limit":1e400}}"#),
            Close(3501),
        ),
        c(
            "fractional id",
            true,
            text(r#"{"id":1.5,"ping":{}}"#),
            Close(3501),
        ),
        c(
            "id above u32",
            true,
            text(r#"{"id":4294967296,"ping":{}}"#),
            Close(3501),
        ),
        c(
            "subs of the wrong type in connect",
            false,
            text(r#"{"id":1,"connect":{"subs":"x"}}"#),
            Close(3501),
        ),
        c(
            "token of the wrong type",
            false,
            text(r#"{"id":1,"connect":{"token":123}}"#),
            Close(3501),
        ),
        c(
            "recover of the wrong type",
            true,
            text(r#"{"id":1,"subscribe":{"channel":"a","recover":"yes"}}"#),
            Close(3501),
        ),
        c(
            "number out of double range in data",
            true,
            text(r#"{"id":32,"publish":{"channel":"a","data":{"n":1e999}}}"#),
            Error(32, 107),
        ),
        c(
            "lone surrogate escape in data",
            true,
            text(r#"{"id":33,"publish":{"channel":"a","data":"5\udbbb"}}"#),
            Error(33, 107),
        ),
        c(
            "null method body",
            true,
            text(r#"{"id":22,"subscribe":null}"#),
            Error(22, 104),
        ),
        c(
            "empty subscribe body",
            true,
            text(r#"{"id":23,"subscribe":{}}"#),
            Error(23, 107),
        ),
        c(
            "NUL in a channel name",
            true,
            text(r#"{"id":24,"subscribe":{"channel":"a\u0000b"}}"#),
            Error(24, 107),
        ),
        c(
            "huge method name",
            true,
            text(format!(r#"{{"id":25,"{}":{{}}}}"#, "m".repeat(10_000))),
            Error(25, 104),
        ),
        c(
            "non-ASCII channel name is fine",
            true,
            text(r#"{"id":26,"subscribe":{"channel":"café ☕"}}"#),
            Accept(26),
        ),
        // Tokens.
        c(
            "huge token",
            false,
            text(format!(
                r#"{{"id":1,"connect":{{"token":"{}"}}}}"#,
                "a".repeat(20_000)
            )),
            Close(3500),
        ),
        c(
            "refresh with a garbage token",
            true,
            text(r#"{"id":1,"refresh":{"token":"x.y.z"}}"#),
            Close(3500),
        ),
        c(
            "subscription token for another channel",
            true,
            Input::Text(String::new()),
            Error(27, 103),
        ),
        // Access.
        c(
            "publish into another user's channel",
            true,
            text(r#"{"id":28,"publish":{"channel":"dm#alice,bob","data":{}}}"#),
            Error(28, 103),
        ),
        c(
            "publish into a private channel",
            true,
            text(r#"{"id":29,"publish":{"channel":"$secret","data":{}}}"#),
            Error(29, 103),
        ),
        c(
            "subscribe to another user's channel",
            true,
            text(r#"{"id":30,"subscribe":{"channel":"dm#alice,bob"}}"#),
            Error(30, 103),
        ),
        // Floods.
        c(
            "4,095 pongs and a ping in one frame (the most a frame holds)",
            true,
            text(format!(
                "{}\n{}",
                vec!["{}"; groupcast_proto::client::MAX_COMMANDS_PER_FRAME - 1].join("\n"),
                r#"{"id":31,"ping":{}}"#
            )),
            Accept(31),
        ),
        c(
            "one command over MAX_COMMANDS_PER_FRAME in one frame",
            true,
            text(vec!["{}"; groupcast_proto::client::MAX_COMMANDS_PER_FRAME + 1].join("\n")),
            Close(3501),
        ),
        c(
            "command flood over the rate limit",
            true,
            text(
                (1001..=1250)
                    .map(|i| format!(r#"{{"id":{i},"ping":{{}}}}"#))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Error(1250, 111),
        ),
        c(
            // Bad requests spend the command rate like any command.
            "flood of params that are not objects over the rate limit",
            true,
            text(
                (1001..=1250)
                    .map(|i| format!(r#"{{"id":{i},"ping":[]}}"#))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Error(1250, 111),
        ),
        c(
            "subscribe flood over the channel limit",
            true,
            text(
                (1001..=1130)
                    .map(|i| format!(r#"{{"id":{i},"subscribe":{{"channel":"flood{i}"}}}}"#))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Error(1130, 106),
        ),
    ]
    .into_iter()
    .chain(params_that_are_not_objects())
    .collect()
}

/// Every method's params must be a JSON object: serde alone would read a
/// struct from an array by position (`"connect":["token"]` connected).
/// Params of another type are a bad request: error 107, nothing runs, the
/// connection stays (a `connect` can follow). At the two nested places that
/// hold a struct (`connect.subs` values, `history.since`) a non-object is a
/// field of the wrong type: close 3501 like any other (docs/protocol.md §8).
fn params_that_are_not_objects() -> Vec<Case> {
    let mut out = Vec::new();
    for method in groupcast_proto::client::METHODS {
        for params in [r#"["a",{}]"#, "[]", r#""a""#, "5", "true"] {
            let connect = method == "connect";
            out.push(Case {
                what: format!("{method} params {params}"),
                connected: !connect,
                input: text(format!(r#"{{"id":1,"{method}":{params}}}"#)),
                expect: match connect {
                    true => Expect::ErrorThenConnect(1, 107),
                    false => Expect::Error(1, 107),
                },
            });
        }
    }
    for (what, frame, connected) in [
        (
            "connect.subs value is an array",
            r#"{"id":1,"connect":{"subs":{"a":["a",true]}}}"#,
            false,
        ),
        (
            "history.since is an array",
            r#"{"id":1,"history":{"channel":"a","since":[1,"e"]}}"#,
            true,
        ),
    ] {
        out.push(Case {
            what: what.into(),
            connected,
            input: text(frame),
            expect: Expect::Close(3501),
        });
    }
    out
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
    let rss_before = rss_kib();
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
            // Placeholder: a subscription token minted for this server.
            Input::Text(t) if t.is_empty() => {
                let token = s.sub_token("mallory", "$other", json!({}));
                c.send_text(
                    json!({"id":27,"subscribe":{"channel":"$mine","token":token}}).to_string(),
                )
                .await
                .unwrap()
            }
            Input::Text(t) => c.send_text(t).await.unwrap(),
            Input::Binary(b) => c.send_binary(b).await.unwrap(),
            Input::Frames(frames) => {
                for (op, payload, fin) in frames {
                    // The server may close mid-way; that is the outcome checked below.
                    if c.send_frame(op, payload, fin).await.is_err() {
                        break;
                    }
                }
            }
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
            Expect::ErrorThenConnect(id, code) => {
                let r = c
                    .reply(id)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                assert_eq!(r["error"]["code"], code, "{}: {r}", case.what);
                let r = c
                    .command("connect", json!({"token": s.token("mallory", json!({}))}))
                    .await
                    .unwrap();
                assert!(r.get("connect").is_some(), "{}: {r}", case.what);
            }
            Expect::Error(id, code) => {
                let r = c
                    .reply(id)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                assert_eq!(r["error"]["code"], code, "{}: {r}", case.what);
                // Long enough for the command rate (100/s) to refill a few tokens
                // after the flood case.
                tokio::time::sleep(Duration::from_millis(50)).await;
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
        let p = bystander.publication(T).await.unwrap();
        assert_eq!(
            p["pub"]["data"]["n"], published,
            "bystander after {}",
            case.what
        );
    }
    assert!(published >= 50, "the table has {published} cases");

    // Afterwards the server holds exactly the bystander's state again: no
    // leaked connection, subscription, channel or presence entry.
    let mut left;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, info) = s.api("info", json!({})).await;
        left = info["result"]["nodes"][0].clone();
        if (left["num_clients"] == 1 && left["num_channels"] == 1)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left["num_clients"], 1, "{left}");
    assert_eq!(left["num_channels"], 1, "{left}");
    assert_eq!(left["num_subs"], 1, "{left}");
    let (_, p) = s.api("presence_stats", json!({"channel":"watch"})).await;
    assert_eq!(p["result"], json!({"num_clients":1,"num_users":1}));
    // And memory: the whole process (server and test clients) stays near its
    // baseline. The allocator may keep freed pages, hence the margin; a leak
    // per case (buffers, tasks) would show as growth well beyond it.
    let rss_after = rss_kib();
    eprintln!("RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn stale_connection_without_connect_is_closed() {
    let mut config = TestServer::dev_config();
    config.client.connect_timeout = Duration::from_millis(500);
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
        let p = fast.publication(T).await.unwrap();
        assert_eq!(p["pub"]["data"]["i"], i);
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
