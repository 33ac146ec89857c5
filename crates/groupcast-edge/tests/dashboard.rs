//! The operator dashboard on a single node (what `groupcast dev` runs): the
//! page is self-contained, the data needs the API key, shows this node,
//! its channels and its errors by code, says membership and NATS are not in
//! use, and is built once per second however many viewers ask. The
//! clustered side is in `crates/groupcast/tests/dashboard.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use groupcast_testkit::{TestServer, API_KEY};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

/// The response head of `GET path`, lower-cased.
async fn response_head(s: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

async fn data(s: &TestServer, headers: &str) -> (u16, Value) {
    s.http("GET", "/dashboard/data", headers, b"").await
}

/// The data with the key, polled until `ok` holds (bounded: `T`).
async fn data_until(s: &TestServer, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (status, d) = data(s, &format!("Authorization: apikey {API_KEY}\r\n")).await;
        assert_eq!(status, 200, "{d}");
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what}: {d:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_page_is_self_contained_and_the_data_needs_the_api_key() {
    let s = TestServer::start().await;
    let (status, page) = s.http_raw("GET", "/dashboard", "", b"").await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<title>Groupcast dashboard</title>"));
    // Nothing from elsewhere: no absolute URL, no external script or style.
    for needle in ["http://", "https://", "//cdn", "src=", "<link"] {
        assert!(!page.contains(needle), "the page holds {needle:?}");
    }
    // ... and the browser is told so.
    let head = response_head(&s, "/dashboard").await;
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'unsafe-inline'"),
        "{head}"
    );
    assert!(head.contains("connect-src 'self'"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");

    for headers in [
        String::new(),
        "X-API-Key: wrong\r\n".to_string(),
        format!("Authorization: apikey {API_KEY}x\r\n"),
        format!("Authorization: bearer {API_KEY}\r\n"),
    ] {
        let (status, body) = data(&s, &headers).await;
        assert_eq!(status, 401, "headers {headers:?}");
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    for headers in [
        format!("Authorization: apikey {API_KEY}\r\n"),
        format!("X-API-Key: {API_KEY}\r\n"),
    ] {
        let (status, body) = data(&s, &headers).await;
        assert_eq!(status, 200, "headers {headers:?}: {body}");
        assert!(body["edges"].is_array(), "{body}");
    }
    let metrics = String::from_utf8(s.http_raw("GET", "/metrics", "", b"").await.1).unwrap();
    for series in [
        r#"groupcast_dashboard_requests_total{outcome="unauthorized"}"#,
        r#"groupcast_dashboard_requests_total{outcome="ok"}"#,
        "groupcast_dashboard_refreshes_total",
    ] {
        assert!(metrics.contains(series), "no {series} in /metrics");
    }

    // No key configured: nobody gets the data.
    let mut config = TestServer::dev_config();
    config.api.key = String::new();
    let s = TestServer::start_with(config).await;
    let (status, _) = data(&s, "X-API-Key: \r\n").await;
    assert_eq!(status, 401);
    let (status, _) = data(&s, "Authorization: apikey \r\n").await;
    assert_eq!(status, 401);

    // Turned off: neither route exists.
    let mut config = TestServer::dev_config();
    config.dashboard.enabled = false;
    let s = TestServer::start_with(config).await;
    assert_eq!(s.http_raw("GET", "/dashboard", "", b"").await.0, 404);
    let (status, _) = data(&s, &format!("X-API-Key: {API_KEY}\r\n")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_single_node_shows_itself_its_channels_and_its_errors() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    for c in [&mut a, &mut b] {
        let r = c
            .command("subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
    }
    let r = a
        .command("subscribe", json!({"channel": "chat"}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");

    let d = data_until(&s, "two subscribers of news", |d| {
        d["channels"]["top"][0] == json!({"channel": "news", "subscribers": 2})
    })
    .await;
    assert_eq!(
        d["channels"]["top"][1],
        json!({"channel": "chat", "subscribers": 1})
    );
    assert_eq!(d["channels"]["total"], 2);
    assert_eq!(d["channels"]["scope"], "this node");
    let edges = d["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{d:#}");
    let e = &edges[0];
    assert_eq!(e["this"], true);
    assert_eq!(e["reported"], true);
    assert_eq!(e["name"], s.config.name.as_str());
    assert_eq!(e["address"], s.addr.to_string());
    assert_eq!(e["connections"], 2);
    assert_eq!(e["users"], 2);
    assert_eq!(e["subscriptions"], 3);
    assert_eq!(e["channels"], 2);
    assert_eq!(d["node"]["name"], s.config.name.as_str());
    assert_eq!(d["membership"]["in_use"], false, "{d:#}");
    assert!(d["membership"]["note"]
        .as_str()
        .unwrap()
        .contains("not in use"));
    assert_eq!(d["membership"]["replicas"], json!([]));
    assert_eq!(d["nats"]["in_use"], false, "{d:#}");
    assert!(d["nats"]["note"].as_str().unwrap().contains("not in use"));
    assert_eq!(d["edges_error"], Value::Null);

    // An error reply (102: no such namespace) shows under its code, in the
    // total and, from the second sample on, in the recent count.
    let count = |d: &Value, field: &str| {
        d["errors"]["codes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == "error" && c["code"] == 102)
            .map(|c| c[field].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let before = count(&d, "total");
    for _ in 0..3 {
        let r = a
            .command("subscribe", json!({"channel": "nope:x"}))
            .await
            .unwrap();
        assert_eq!(r["error"]["code"], 102, "{r}");
    }
    let d = data_until(&s, "three more 102 errors, recent ones too", |d| {
        count(d, "total") >= before + 3 && count(d, "recent") >= 3
    })
    .await;
    let row = d["errors"]["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == 102)
        .unwrap()
        .clone();
    assert_eq!(row["name"], "unknown channel", "{row}");
    assert!(
        d["errors"]["window_seconds"].as_f64().unwrap() > 0.0,
        "{d:#}"
    );
    // Commands came in since the first sample: a rate, not a blank.
    assert!(
        d["edges"][0]["messages_in_per_second"].as_f64().unwrap() > 0.0,
        "{d:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_viewers_share_one_build_per_second() {
    let s = TestServer::start().await;
    let key = format!("X-API-Key: {API_KEY}\r\n");
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..50).map(|_| data(&s, &key))).await;
    let mut builds = BTreeSet::new();
    for (status, d) in answers {
        assert_eq!(status, 200);
        builds.insert(d["generated_at_ms"].as_u64().unwrap());
    }
    // 50 viewers within a second or two: one build per second at most.
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        builds.len() <= seconds + 1,
        "{} builds for 50 requests in {:?}",
        builds.len(),
        started.elapsed()
    );
}
