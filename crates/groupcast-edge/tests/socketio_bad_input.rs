//! Socket.IO bad input (issue 20, point 6): each gets Engine.IO's documented answer (HTTP 400
//! with its code and message, 413 for a body over `max_http_buffer_size`) or ends only its own
//! session, is counted, and another client's session goes on. Raw HTTP, as a broken or
//! hostile client sends it.

use std::time::Duration;

use groupcast_testkit::TestServer;
use serde_json::{json, Value};

const BASE: &str = "/socket.io/?EIO=4&transport=polling";

/// A new polling session: its sid.
async fn handshake(server: &TestServer) -> String {
    let (status, body) = server.http_raw("GET", BASE, "", b"").await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{body}");
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
    assert_eq!(open["pingInterval"], 25000, "{open}");
    open["sid"].as_str().unwrap().to_string()
}

async fn post(server: &TestServer, sid: &str, body: &[u8]) -> (u16, String) {
    let path = format!("{BASE}&sid={sid}");
    let (status, body) = server
        .http_raw(
            "POST",
            &path,
            "Content-Type: text/plain;charset=UTF-8\r\n",
            body,
        )
        .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn poll(server: &TestServer, sid: &str) -> (u16, String) {
    let path = format!("{BASE}&sid={sid}");
    let (status, body) = server.http_raw("GET", &path, "", b"").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The session is over: its next poll says so (the close packet, or "Session ID unknown"
/// once it is gone).
async fn assert_over(server: &TestServer, sid: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = poll(server, sid).await;
        if body == "1" || (status == 400 && body.contains("\"code\":1")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {sid} still answers: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects namespace `/` and reads the CONNECT answer: the session works.
async fn assert_works(server: &TestServer, sid: &str) {
    assert_eq!(post(server, sid, b"40").await, (200, "ok".into()));
    let (status, body) = poll(server, sid).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("40{\"sid\":"), "{body}");
}

#[tokio::test]
async fn engine_io_errors_answer_with_their_codes() {
    let server = TestServer::start().await;
    let cases = [
        (
            "GET",
            "/socket.io/?EIO=3&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "/socket.io/?transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=flashsocket",
            0,
            "Transport unknown",
        ),
        ("GET", "/socket.io/?EIO=4", 0, "Transport unknown"),
        ("POST", BASE, 2, "Bad handshake method"),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
    ];
    for (method, path, code, message) in cases {
        let (status, body) = server.http(method, path, "", b"4x").await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(
            body,
            json!({"code": code, "message": message}),
            "{method} {path}"
        );
    }
    let counted = server
        .metric("groupcast_socketio_http_errors_total{code=\"5\"}")
        .await;
    assert_eq!(counted, 2.0);
}

#[tokio::test]
async fn a_malformed_packet_ends_its_session_and_no_other() {
    let server = TestServer::start().await;
    let other = handshake(&server).await;
    for bad in [
        &b"4garbage"[..],                                       // not a Socket.IO packet
        b"42[\"connect\"]",                                     // a reserved event name
        b"bAQID",                                               // an attachment without its packet
        b"451-[\"a\",{\"_placeholder\":true,\"num\":0}]\x1e4x", // text where an attachment was due
        b"0{\"sid\":\"forged\"}",                               // an open packet from the client
    ] {
        let sid = handshake(&server).await;
        let (status, _) = post(&server, &sid, bad).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(bad));
        assert_over(&server, &sid).await;
    }
    // Not even an Engine.IO packet: 400 "Bad request", and the session ends.
    let sid = handshake(&server).await;
    let (status, body) = post(&server, &sid, b"9x").await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );
    assert_over(&server, &sid).await;
    assert!(server.metric("groupcast_socketio_bad_packets_total").await >= 6.0);
    assert_works(&server, &other).await;
}

#[tokio::test]
async fn a_body_over_max_http_buffer_size_gets_413() {
    let mut config = TestServer::dev_config();
    config.socketio.max_http_buffer_size = 2048;
    let server = TestServer::start_with(config).await;
    let other = handshake(&server).await;
    let sid = handshake(&server).await;
    let big = format!("42[\"a\",\"{}\"]", "x".repeat(3000));
    let (status, _) = post(&server, &sid, big.as_bytes()).await;
    assert_eq!(status, 413);
    assert_over(&server, &sid).await;
    // Just under the limit is fine.
    let fits = format!("42[\"a\",\"{}\"]", "x".repeat(2000));
    assert_eq!(post(&server, &other, fits.as_bytes()).await.0, 200);
    assert_works(&server, &other).await;
}

#[tokio::test]
async fn two_polls_at_once_end_the_session() {
    let server = TestServer::start().await;
    let sid = handshake(&server).await;
    let first = {
        let (addr, sid) = (server.addr, sid.clone());
        tokio::spawn(async move {
            let path = format!("{BASE}&sid={sid}");
            groupcast_testkit::http_request(addr, "GET", &path, "", b"").await
        })
    };
    // The second poll while the first waits: refused, and the session is over, which ends
    // the first with the close packet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = poll(&server, &sid).await;
        if status == 400 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
    };
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first poll ends")
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"1"[..]));
}

#[tokio::test]
async fn an_unknown_namespace_gets_connect_error_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let sid = handshake(&server).await;
    assert_eq!(post(&server, &sid, b"40/nowhere,").await.0, 200);
    let (_, body) = poll(&server, &sid).await;
    assert_eq!(body, r#"44/nowhere,{"message":"Invalid namespace"}"#);
    assert_works(&server, &sid).await;
}

#[tokio::test]
async fn a_storm_of_handshakes_is_limited_per_address() {
    let mut config = TestServer::dev_config();
    config.client.connection_rate_per_ip = 1.0;
    config.client.connection_burst_per_ip = 3.0;
    let server = TestServer::start_with(config).await;
    let mut refused = 0;
    for _ in 0..6 {
        let (status, _) = server.http_raw("GET", BASE, "", b"").await;
        if status == 429 {
            refused += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(refused >= 2, "{refused} of 6 handshakes refused");
}

#[tokio::test]
async fn a_client_without_a_token_is_refused_where_anonymous_is_not_allowed() {
    let mut config = TestServer::dev_config();
    config.client.allow_anonymous_connect_without_token = false;
    let server = TestServer::start_with(config).await;
    let sid = handshake(&server).await;
    assert_eq!(post(&server, &sid, b"40").await.0, 200);
    let (_, body) = poll(&server, &sid).await;
    assert_eq!(
        body,
        r#"44{"data":{"code":3500},"message":"invalid token: none given"}"#
    );
    let token = server.token("alice", json!({}));
    let connect = format!("40{{\"token\":\"{token}\"}}");
    assert_eq!(post(&server, &sid, connect.as_bytes()).await.0, 200);
    let (_, body) = poll(&server, &sid).await;
    assert!(body.starts_with("40{\"sid\":"), "{body}");
}

#[tokio::test]
async fn a_session_that_connects_no_namespace_is_closed_after_connect_timeout() {
    let mut config = TestServer::dev_config();
    config.socketio.connect_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let idle = handshake(&server).await;
    let used = handshake(&server).await;
    assert_works(&server, &used).await;
    assert_over(&server, &idle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connected one is not affected.
    assert_eq!(post(&server, &used, b"41").await, (200, "ok".into()));
    assert_eq!(
        server
            .metric("groupcast_socketio_connect_timeouts_total")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_namespace_whose_target_is_unreachable_refuses_connects() {
    let mut config = TestServer::dev_config();
    // No NATS on this server, and no HTTP target by that name.
    config.socketio.namespaces[0].target = "nowhere".into();
    let server = TestServer::start_with(config).await;
    let sid = handshake(&server).await;
    assert_eq!(post(&server, &sid, b"40").await.0, 200);
    let (_, body) = poll(&server, &sid).await;
    assert_eq!(
        body,
        r#"44{"data":{"code":3508},"message":"backend target unreachable"}"#
    );
}

#[tokio::test]
async fn the_api_refuses_reserved_events_and_rooms_of_another_namespace() {
    let mut config = TestServer::dev_config();
    config
        .socketio
        .namespaces
        .push(groupcast_edge::config::SioNamespaceConfig {
            name: "/chat".into(),
            channel_prefix: "chat:".into(),
            ..Default::default()
        });
    config.namespaces.push(groupcast_core::NamespaceConfig {
        name: "chat".into(),
        options: groupcast_core::ChannelOptions::dev(),
    });
    let server = TestServer::start_with(config).await;
    let bad_request = json!({"error": {"code": 107, "message": "bad request"}});
    for event in ["connect", "disconnect", "connect_error", ""] {
        let (_, r) = server
            .api(
                "sio_emit",
                json!({"room": "lobby", "event": event, "args": []}),
            )
            .await;
        assert_eq!(r, bad_request, "room emit of {event:?}");
        let (_, r) = server
            .api(
                "sio_emit",
                json!({"client": "c", "event": event, "args": []}),
            )
            .await;
        assert_eq!(r, bad_request, "emit of {event:?}");
    }
    // Room "chat:x" of "/" would be channel "chat:x": a room of "/chat".
    let (_, r) = server
        .api("sio_join", json!({"client": "c", "room": "chat:x"}))
        .await;
    assert_eq!(r, bad_request);
    let (_, r) = server
        .api(
            "sio_join",
            json!({"client": "c", "namespace": "/chat", "room": "x"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let (_, r) = server
        .api(
            "sio_emit",
            json!({"namespace": "/nope", "room": "x", "event": "e", "args": []}),
        )
        .await;
    assert_eq!(r["error"]["code"], 102, "{r}");
}

#[test]
fn bad_socketio_settings_are_refused_naming_the_key() {
    use groupcast_edge::config::SioNamespaceConfig;
    let ns = |name: &str, prefix: &str| SioNamespaceConfig {
        name: name.into(),
        channel_prefix: prefix.into(),
        ..Default::default()
    };
    type Change = Box<dyn Fn(&mut groupcast_edge::Config)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|c| c.socketio.path = "/api/sio/".into()),
            "socketio.path",
        ),
        (
            Box::new(|c| c.socketio.path = "socket.io".into()),
            "socketio.path",
        ),
        (
            Box::new(|c| c.socketio.read_buffer_size = 100),
            "socketio.read_buffer_size",
        ),
        (
            Box::new(|c| c.socketio.namespaces[0].connect_proxy = "missing".into()),
            "socketio.namespaces[0].connect_proxy",
        ),
        (
            Box::new(|c| c.socketio.namespaces[0].target = "a..b".into()),
            "socketio.namespaces[0].target",
        ),
        (
            Box::new(move |c| {
                c.socketio.namespaces = vec![ns("/a", "chat:"), ns("/b", "chat:vip:")]
            }),
            "channel_prefix",
        ),
        (
            Box::new(move |c| c.socketio.namespaces = vec![ns("/a", "x:"), ns("/b", "x:")]),
            "channel_prefix",
        ),
        (
            Box::new(move |c| {
                c.socketio.namespaces = (0..65)
                    .map(|i| ns(&format!("/n{i}"), &format!("n{i}-")))
                    .collect()
            }),
            "socketio.namespaces",
        ),
        (
            Box::new(|c| {
                c.relay.routes.push(groupcast_edge::config::RouteConfig {
                    path: "/socket.io/".into(),
                    target: "t".into(),
                    ..Default::default()
                })
            }),
            "socketio.path",
        ),
    ];
    for (change, key) in cases {
        let mut c = TestServer::dev_config();
        change(&mut c);
        let e = groupcast_edge::check_config(&c).unwrap_err();
        assert!(e.contains(key), "{key}: {e}");
    }
    groupcast_edge::check_config(&TestServer::dev_config()).expect("the dev profile is valid");
}

#[tokio::test]
async fn a_session_the_server_ends_is_gone_once_its_close_packet_is_polled() {
    let mut c = TestServer::dev_config();
    c.socketio.enabled = true;
    let server = TestServer::start_with(c).await;
    let token = groupcast_edge::auth::mint_hs256(groupcast_testkit::SECRET, &json!({"sub": "u1"}));
    let sid = handshake(&server).await;
    assert_eq!(
        post(
            &server,
            &sid,
            format!("40{}", json!({"token": token})).as_bytes()
        )
        .await,
        (200, "ok".into())
    );
    assert!(poll(&server, &sid).await.1.starts_with("40{"));
    let (status, r) = server.api("disconnect", json!({"user": "u1"})).await;
    assert!(status == 200 && r.get("error").is_none(), "{r}");
    // The DISCONNECT alone, then the close packet alone (socket.io-client reports one reason,
    // "io server disconnect", only when they come in that order).
    assert_eq!(poll(&server, &sid).await, (200, "41".into()));
    assert_eq!(poll(&server, &sid).await, (200, "1".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server
        .metric("groupcast_connections{protocol=\"socketio\"}")
        .await
        > 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session still counts as connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = poll(&server, &sid).await;
    assert_eq!((status, body.contains("\"code\":1")), (400, true), "{body}");
}
