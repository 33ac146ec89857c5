//! Server HTTP API: authentication, malformed bodies, every method's answer
//! shape, and that a refused call changes nothing.

use groupcast_testkit::{TestServer, API_KEY};
use serde_json::json;

async fn history_len(s: &TestServer, channel: &str) -> usize {
    let (_, r) = s
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    r["result"]["publications"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_and_does_nothing() {
    let s = TestServer::start().await;
    let body = json!({"channel":"news","data":{"x":1}}).to_string();
    for headers in [
        String::new(),
        "X-API-Key: wrong\r\n".to_string(),
        format!("X-API-Key: {API_KEY}x\r\n"),
        format!("Authorization: bearer {API_KEY}\r\n"),
        "Authorization: apikey \r\n".to_string(),
    ] {
        let (status, _) = s
            .http("POST", "/api/publish", &headers, body.as_bytes())
            .await;
        assert_eq!(status, 401, "headers {headers:?}");
    }
    assert_eq!(history_len(&s, "news").await, 0, "nothing was published");
    let (status, r) = s
        .http(
            "POST",
            "/api/publish",
            &format!("Authorization: apikey {API_KEY}\r\n"),
            body.as_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(history_len(&s, "news").await, 1);
}

#[tokio::test]
async fn empty_configured_key_refuses_everything() {
    let mut config = TestServer::dev_config();
    config.api.key = String::new();
    let s = TestServer::start_with(config).await;
    let (status, _) = s.http("POST", "/api/info", "X-API-Key: \r\n", b"{}").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn malformed_requests_get_http_errors() {
    let s = TestServer::start().await;
    let key = format!("X-API-Key: {API_KEY}\r\n");
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("POST", "/api/publish", b"not json".to_vec(), 400),
        ("POST", "/api/publish", b"[1,2]".to_vec(), 400),
        (
            "POST",
            "/api/publish",
            br#"{"channel":5,"data":{}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/history",
            br#"{"channel":"a","limit":"ten"}"#.to_vec(),
            400,
        ),
        ("POST", "/api/batch", br#"{"commands":"x"}"#.to_vec(), 400),
        ("POST", "/api/nope", b"{}".to_vec(), 404),
        ("GET", "/api/publish", Vec::new(), 405),
        ("POST", "/api/publish", vec![b' '; 2 << 20], 413),
        (
            "POST",
            "/api/publish",
            format!(
                r#"{{"channel":"a","data":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
            400,
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, _) = s.http_raw(method, path, &key, &body).await;
        assert_eq!(
            status,
            want,
            "{method} {path} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
}

#[tokio::test]
async fn api_errors_come_back_in_the_body() {
    let s = TestServer::start().await;
    let cases = [
        ("publish", json!({"channel":"nope:x","data":{}}), 102),
        ("publish", json!({"channel":"","data":{}}), 107),
        ("publish", json!({"channel":"a"}), 107),
        (
            "publish",
            json!({"channel":"a","data":{},"b64data":"AA=="}),
            107,
        ),
        ("publish", json!({"channel":"a","b64data":"***"}), 107),
        (
            "history",
            json!({"channel":"a","limit":5,"since":{"offset":1,"epoch":"bad"}}),
            112,
        ),
        ("history", json!({"channel":"a","limit":100000}), 106),
        (
            "publish",
            json!({"channel":"a","data":"x".repeat(70_000)}),
            106,
        ),
        (
            "disconnect",
            json!({"user":"u","disconnect":{"code":1000,"reason":"x"}}),
            107,
        ),
        (
            "disconnect",
            json!({"user":"u","disconnect":{"code":4000,"reason":"r".repeat(124)}}),
            107,
        ),
        ("subscribe", json!({"channel":"a"}), 107),
    ];
    for (method, body, code) in cases {
        let (status, r) = s.api(method, body.clone()).await;
        assert_eq!(status, 200, "{method} {body}");
        assert_eq!(r["error"]["code"], code, "{method} {body}: {r}");
    }
}

#[tokio::test]
async fn methods_answer_centrifugo_shapes() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.command("subscribe", json!({"channel":"room"}))
        .await
        .unwrap();

    let (_, r) = s
        .api(
            "publish",
            json!({"channel":"room","data":{"t":1},"tags":{"k":"v"}}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert!(r["result"]["epoch"].is_string());
    let (_, r) = s
        .api(
            "broadcast",
            json!({"channels":["room","nope:x"],"data":{"t":2}}),
        )
        .await;
    let responses = r["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], 2, "{r}");
    assert_eq!(responses[1]["error"]["code"], 102, "{r}");

    let (_, r) = s.api("history", json!({"channel":"room"})).await;
    assert_eq!(
        r["result"]["publications"],
        json!([]),
        "no limit: position only"
    );
    assert_eq!(r["result"]["offset"], 2);
    let (_, r) = s.api("history", json!({"channel":"room","limit":10})).await;
    let pubs = r["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs[0]["data"], json!({"t":1}));
    assert_eq!(pubs[0]["tags"], json!({"k":"v"}));

    let (_, r) = s.api("presence", json!({"channel":"room"})).await;
    let presence = r["result"]["presence"].as_object().unwrap();
    assert_eq!(presence.values().next().unwrap()["user"], "alice");
    let (_, r) = s.api("presence_stats", json!({"channel":"room"})).await;
    assert_eq!(r["result"], json!({"num_clients":1,"num_users":1}));
    let (_, r) = s.api("channels", json!({"pattern":"ro*"})).await;
    assert_eq!(r["result"]["channels"], json!({"room":{"num_clients":1}}));
    let (_, r) = s.api("channels", json!({"pattern":"x*"})).await;
    assert_eq!(r["result"]["channels"], json!({}));
    let (_, r) = s.api("info", json!({})).await;
    let node = &r["result"]["nodes"][0];
    assert_eq!(
        (node["num_clients"].clone(), node["num_channels"].clone()),
        (json!(1), json!(1))
    );
    assert!(node["uid"].is_string() && node["name"].is_string());

    let (_, r) = s.api("history_remove", json!({"channel":"room"})).await;
    assert_eq!(r["result"], json!({}));
    assert_eq!(history_len(&s, "room").await, 0);

    let (_, r) = s
        .api(
            "batch",
            json!({"commands":[
                {"publish":{"channel":"room","data":{"t":3}}},
                {"publish":{"channel":"nope:x","data":{}}},
                {"info":{}},
                {"nope":{}},
                {"publish":["room",{"t":4}]},
                {"info":[]}
            ]}),
        )
        .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 6, "{r}");
    // Params that are not an object (serde alone would read the array by
    // position) are a bad request, and nothing is published.
    assert_eq!(replies[4]["error"]["code"], 107, "{r}");
    assert_eq!(replies[5]["error"]["code"], 107, "{r}");
    assert_eq!(
        replies[0]["publish"]["offset"], 3,
        "offsets continue after history_remove: {r}"
    );
    assert_eq!(replies[1]["error"]["code"], 102);
    assert!(replies[2]["info"]["nodes"].is_array());
    assert_eq!(replies[3]["error"]["code"], 104);

    // Deeply nested client data survives the API untouched (no re-parse).
    // (Published to a channel this client does not read: its own JSON parser
    // would refuse the push.)
    let deep: String = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let frame = format!(r#"{{"id":99,"publish":{{"channel":"deep","data":{deep}}}}}"#);
    c.send_text(frame).await.unwrap();
    let r = c.reply(99).await.unwrap();
    assert!(r.get("error").is_none(), "{r}");
    let (status, raw) = s
        .http_raw(
            "POST",
            "/api/history",
            &format!("X-API-Key: {API_KEY}\r\n"),
            br#"{"channel":"deep","limit":1,"reverse":true}"#,
        )
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(raw).unwrap();
    assert!(text.contains(&deep), "deep data returned verbatim");
}

#[tokio::test]
async fn metrics_expose_what_operators_watch() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.command("subscribe", json!({"channel":"m"}))
        .await
        .unwrap();
    c.command("subscribe", json!({"channel":"nope:x"}))
        .await
        .unwrap();
    s.api("publish", json!({"channel":"m","data":{"x":1}}))
        .await;
    c.push(std::time::Duration::from_secs(5)).await.unwrap();
    let (status, body) = s.http_raw("GET", "/metrics", "", b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    // Metrics are process-wide; other tests in this binary add to them, so
    // check what this test itself must have caused.
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
    };
    assert!(value("groupcast_connections{protocol=\"centrifugo\",transport=\"websocket\"}") >= 1.0);
    assert!(value("groupcast_subscriptions ") >= 1.0);
    assert!(value("groupcast_channels ") >= 1.0);
    assert!(value("groupcast_messages_in_total{kind=\"subscribe\"}") >= 2.0);
    assert!(value("groupcast_messages_out_total{kind=\"pub\"}") >= 1.0);
    assert!(value("groupcast_messages_out_total{kind=\"reply\"}") >= 3.0);
    assert!(value("groupcast_bytes_out_total ") > 0.0);
    assert!(value("groupcast_errors_total{code=\"102\"}") >= 1.0);
    assert!(
        value("groupcast_command_duration_seconds_bucket{method=\"subscribe\",le=\"+Inf\"}") >= 2.0
    );
    assert!(value("groupcast_api_requests_total{method=\"publish\",outcome=\"ok\"}") >= 1.0);
}

#[tokio::test]
async fn batch_and_broadcast_sizes_are_limited() {
    let s = TestServer::start().await;
    let commands: Vec<_> = (0..1001).map(|_| json!({"info":{}})).collect();
    let (status, r) = s.api("batch", json!({ "commands": commands })).await;
    assert_eq!(status, 200);
    assert_eq!(
        r["error"]["code"],
        106,
        "1,001 commands: {}",
        &r.to_string()[..80.min(r.to_string().len())]
    );
    let channels: Vec<_> = (0..10_001).map(|i| format!("c{i}")).collect();
    let (_, r) = s
        .api("broadcast", json!({ "channels": channels, "data": {} }))
        .await;
    assert_eq!(r["error"]["code"], 106);
    assert_eq!(history_len(&s, "c0").await, 0, "nothing was published");
}
