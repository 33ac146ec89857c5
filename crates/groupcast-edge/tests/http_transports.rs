//! The Centrifugo protocol over HTTP streaming and SSE with the emulation endpoint (issue 20,
//! point 5b), on one in-process edge, spoken by hand as a client (or a broken one) would:
//! commands sent through `/emulation` run on the stream's session in order; each bad input
//! gets its documented status (docs/protocol.md §1.8), is counted, and harms nobody else.

use std::time::Duration;

use groupcast_testkit::TestServer;
use serde_json::{json, Value};

/// One open HTTP transport: its response body, read message by message.
struct Stream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    sse: bool,
}

impl Stream {
    async fn http_stream(server: &TestServer, connect: &Value) -> Stream {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/connection/http_stream", server.addr))
            .header("Content-Type", "application/json")
            .body(connect.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Stream {
            resp,
            buf: Vec::new(),
            sse: false,
        }
    }

    async fn sse(server: &TestServer, connect: &Value) -> Stream {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/connection/sse", server.addr))
            .query(&[("cf_connect", connect.to_string())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream {
            resp,
            buf: Vec::new(),
            sse: true,
        }
    }

    /// The next message (bounded: 10 s); `None` once the body ended.
    async fn next(&mut self) -> Option<Value> {
        let end: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        loop {
            if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                let item: Vec<u8> = self.buf.drain(..i + end.len()).collect();
                let text = String::from_utf8(item[..i].to_vec()).unwrap();
                let text = match self.sse {
                    true => text
                        .strip_prefix("data: ")
                        .expect("a data line")
                        .to_string(),
                    false => text,
                };
                return Some(serde_json::from_str(&text).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("a message within 10 s")
                .expect("the body reads");
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return None,
            }
        }
    }

    /// The next message that is not a ping, a join or a leave.
    async fn next_message(&mut self) -> Value {
        loop {
            let m = self.next().await.expect("the stream is open");
            let presence = m["push"]["join"].is_object() || m["push"]["leave"].is_object();
            if m != json!({}) && !presence {
                return m;
            }
        }
    }
}

fn connect(server: &TestServer, user: &str) -> Value {
    json!({"id": 1, "connect": {"token": server.token(user, json!({})), "name": "test"}})
}

/// The connect reply's result: it names the session for `/emulation`.
async fn connected(stream: &mut Stream) -> Value {
    let reply = stream.next_message().await;
    assert_eq!(reply["id"], 1, "{reply}");
    let result = reply["connect"].clone();
    assert!(
        result["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply}"
    );
    assert!(
        result["node"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply}"
    );
    result
}

async fn emulate(server: &TestServer, body: &[u8], content_type: &str) -> (u16, String) {
    let headers = format!("Content-Type: {content_type}\r\n");
    let (status, body) = server.http_raw("POST", "/emulation", &headers, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `commands` (a frame) to `session` through the emulation endpoint.
async fn send(server: &TestServer, session: &str, commands: &str) -> u16 {
    let body = json!({"session": session, "node": "whatever", "data": commands}).to_string();
    emulate(server, body.as_bytes(), "application/json").await.0
}

/// Subscribes to `channel` through emulation and gets the reply on the stream, then a
/// publication made through the API.
async fn subscribe_and_receive(server: &TestServer, stream: &mut Stream, session: &str, n: u32) {
    let cmd = json!({"id": 2, "subscribe": {"channel": "news"}}).to_string();
    assert_eq!(send(server, session, &cmd).await, 200);
    let reply = stream.next_message().await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply["subscribe"].is_object(), "{reply}");
    let (status, _) = server
        .api("publish", json!({"channel": "news", "data": {"n": n}}))
        .await;
    assert_eq!(status, 200);
    let push = stream.next_message().await;
    assert_eq!(push["push"]["channel"], "news", "{push}");
    assert_eq!(push["push"]["pub"]["data"], json!({"n": n}), "{push}");
}

#[tokio::test]
async fn commands_sent_through_emulation_run_on_the_streams_session() {
    let server = TestServer::start().await;
    let mut http = Stream::http_stream(&server, &connect(&server, "alice")).await;
    let h = connected(&mut http).await;
    let mut sse = Stream::sse(&server, &connect(&server, "bob")).await;
    let s = connected(&mut sse).await;
    assert_ne!(h["session"], s["session"]);
    let (hs, ss) = (
        h["session"].as_str().unwrap().to_string(),
        s["session"].as_str().unwrap().to_string(),
    );
    subscribe_and_receive(&server, &mut http, &hs, 1).await;
    subscribe_and_receive(&server, &mut sse, &ss, 2).await;
    let pub2 = http.next_message().await;
    assert_eq!(pub2["push"]["pub"]["data"], json!({"n": 2}), "{pub2}");
    // Several commands in one frame, answered in order; the pong `{}` is not answered.
    let frame = "{}\n{\"id\":3,\"rpc\":{\"method\":\"x\"}}\n{\"id\":4,\"presence_stats\":{\"channel\":\"news\"}}";
    assert_eq!(send(&server, &hs, frame).await, 200);
    assert_eq!(http.next_message().await["id"], 3);
    let stats = http.next_message().await;
    assert_eq!(stats["id"], 4, "{stats}");
    assert_eq!(stats["presence_stats"]["num_clients"], 2, "{stats}");
    for (transport, n) in [("http_stream", 1.0), ("sse", 1.0), ("websocket", 0.0)] {
        let series =
            format!("groupcast_connections{{protocol=\"centrifugo\",transport=\"{transport}\"}}");
        assert_eq!(server.metric(&series).await, n, "{series}");
    }
    assert_eq!(
        server
            .metric("groupcast_emulation_requests_total{outcome=\"delivered\"}")
            .await,
        3.0
    );

    // A client that goes away (drops the response) ends its session at once.
    drop(http);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while send(&server, &hs, "{}").await != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let series = "groupcast_connections{protocol=\"centrifugo\",transport=\"http_stream\"}";
    assert_eq!(server.metric(series).await, 0.0);

    // A server-side disconnect ends the stream with a disconnect push.
    let (status, _) = server
        .api(
            "disconnect",
            json!({"user": "bob", "disconnect": {"code": 4000, "reason": "bye"}}),
        )
        .await;
    assert_eq!(status, 200);
    let push = sse.next_message().await;
    assert_eq!(
        push,
        json!({"push": {"disconnect": {"code": 4000, "reason": "bye", "reconnect": true}}})
    );
    assert_eq!(
        sse.next().await,
        None,
        "the body ends after the disconnect push"
    );
}

#[tokio::test]
async fn bad_input_gets_documented_statuses_and_harms_nobody() {
    let mut config = TestServer::dev_config();
    config.client.max_message_size = 4096;
    let server = TestServer::start_with(config).await;
    let mut good = Stream::http_stream(&server, &connect(&server, "alice")).await;
    let session = connected(&mut good).await["session"]
        .as_str()
        .unwrap()
        .to_string();

    // The emulation endpoint.
    let big = json!({"session": session, "data": "x".repeat(4096)}).to_string();
    let not_string = json!({"session": session, "data": {"id": 2}}).to_string();
    let unknown = json!({"session": "0123456789abcdef", "data": "{}"}).to_string();
    let cases: [(&[u8], &str, u16, &str); 6] = [
        (
            unknown.as_bytes(),
            "application/json",
            404,
            "unknown_session",
        ),
        (big.as_bytes(), "application/json", 413, "too_large"),
        (b"{\"session\": ", "application/json", 400, "malformed"),
        (not_string.as_bytes(), "application/json", 400, "malformed"),
        (b"[1,2]", "application/json", 400, "malformed"),
        (b"\x0a\x02", "application/octet-stream", 415, "protobuf"),
    ];
    for (body, content_type, want, outcome) in cases {
        let (status, text) = emulate(&server, body, content_type).await;
        assert_eq!(status, want, "{outcome}: {text}");
        assert!(!text.is_empty(), "{outcome}: a message says why");
    }
    for (outcome, n) in [
        ("unknown_session", 1.0),
        ("too_large", 1.0),
        ("malformed", 3.0),
        ("protobuf", 1.0),
    ] {
        let series = format!("groupcast_emulation_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(server.metric(&series).await, n, "{series}");
    }

    // The stream endpoints, before anything is opened.
    let token = server.token("bob", json!({}));
    let too_big_connect =
        json!({"id": 1, "connect": {"token": token, "data": "x".repeat(4096)}}).to_string();
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let post = |body: String, content_type: &'static str| {
        client
            .post(format!("{base}/connection/http_stream"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    assert_eq!(
        post("{not json".into(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(too_big_connect.clone(), "application/json")
            .await
            .unwrap()
            .status(),
        413
    );
    assert_eq!(
        post("x".into(), "application/octet-stream")
            .await
            .unwrap()
            .status(),
        415
    );
    let sse = |query: Option<String>| {
        let mut req = client.get(format!("{base}/connection/sse"));
        if let Some(q) = query {
            req = req.query(&[("cf_connect", q)]);
        }
        req.send()
    };
    assert_eq!(sse(None).await.unwrap().status(), 400);
    assert_eq!(sse(Some("{not json".into())).await.unwrap().status(), 400);
    assert_eq!(sse(Some(too_big_connect)).await.unwrap().status(), 413);
    let refused = |transport: &str, reason: &str| {
        format!("groupcast_stream_refused_total{{transport=\"{transport}\",reason=\"{reason}\"}}")
    };
    assert_eq!(
        server.metric(&refused("http_stream", "malformed")).await,
        1.0
    );
    assert_eq!(server.metric(&refused("sse", "malformed")).await, 2.0);
    assert_eq!(server.metric(&refused("sse", "too_large")).await, 1.0);

    // A frame the session cannot decode ends that session alone, with 3501.
    let mut broken = Stream::sse(&server, &connect(&server, "mallory")).await;
    let broken_session = connected(&mut broken).await["session"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(send(&server, &broken_session, "{not json").await, 200);
    let push = broken.next_message().await;
    assert_eq!(push["push"]["disconnect"]["code"], 3501, "{push}");
    assert_eq!(push["push"]["disconnect"]["reconnect"], false, "{push}");
    assert_eq!(broken.next().await, None);

    // Nobody else was harmed: the first session still works.
    subscribe_and_receive(&server, &mut good, &session, 7).await;
}

#[tokio::test]
async fn concurrent_emulation_requests_are_each_run_or_refused_with_429() {
    let server = TestServer::start().await;
    let mut stream = Stream::http_stream(&server, &connect(&server, "alice")).await;
    let session = connected(&mut stream).await["session"]
        .as_str()
        .unwrap()
        .to_string();
    // Requests faster than the session runs them: each runs an RPC with no proxy (cheap), so
    // fire them concurrently and expect that some may wait, none is lost, and the queue is
    // bounded: whatever is not 200 is 429.
    let sends = (0..64).map(|i| {
        let cmd = json!({"id": 100 + i, "presence": {"channel": "news"}}).to_string();
        let (server, session) = (&server, &session);
        async move { send(server, session, &cmd).await }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    for _ in 0..accepted {
        let reply = stream.next_message().await;
        assert!(reply["id"].as_u64().unwrap() >= 100, "{reply}");
    }
}

#[tokio::test]
async fn the_drain_ends_streams_with_a_shutdown_disconnect_push() {
    let mut server = TestServer::start().await;
    let mut http = Stream::http_stream(&server, &connect(&server, "alice")).await;
    connected(&mut http).await;
    let mut sse = Stream::sse(&server, &connect(&server, "bob")).await;
    connected(&mut sse).await;
    server.begin_shutdown();
    for stream in [&mut http, &mut sse] {
        let push = stream.next_message().await;
        assert_eq!(
            push,
            json!({"push": {"disconnect": {"code": 3001, "reason": "shutdown", "reconnect": true}}})
        );
        assert_eq!(stream.next().await, None);
    }
    assert!(
        server.stopped(Duration::from_secs(10)).await,
        "the edge stops once its streams ended"
    );
}
