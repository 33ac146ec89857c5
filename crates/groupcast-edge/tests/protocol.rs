//! Centrifugo client protocol against a live in-process server: every
//! command's round trip, the error codes, tokens, namespaces, presence.

use std::time::Duration;

use groupcast_core::{ChannelOptions, NamespaceConfig};
use groupcast_edge::auth::now_unix;
use groupcast_testkit::{Client, Incoming, TestServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

fn err_code(reply: &Value) -> Option<u64> {
    reply["error"]["code"].as_u64()
}

async fn subscribe(c: &mut Client, channel: &str) -> Value {
    let r = c
        .command("subscribe", json!({ "channel": channel }))
        .await
        .unwrap();
    assert!(
        r.get("subscribe").is_some(),
        "subscribe {channel} failed: {r}"
    );
    r["subscribe"].clone()
}

#[tokio::test]
async fn connect_reply_has_client_id_and_ping_settings() {
    let s = TestServer::start().await;
    let (_c, reply) = Client::connect(&s.ws_url(), &s.token("alice", json!({})))
        .await
        .unwrap();
    let r = &reply["connect"];
    assert_eq!(
        r["client"].as_str().unwrap().len(),
        36,
        "client id is a UUID: {reply}"
    );
    assert_eq!(r["ping"], 25);
    assert_eq!(r["pong"], true);
    assert_eq!(r["expires"], true, "token has exp");
    assert!(r["ttl"].as_u64().unwrap() > 3500);
    assert!(r["version"].is_string());
}

#[tokio::test]
async fn every_command_round_trips() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;

    let sub = subscribe(&mut c, "news").await;
    assert_eq!(sub["recoverable"], true);
    assert_eq!(sub["positioned"], true);
    assert!(sub["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    // publish: reply {} and the publication pushed to the subscriber.
    let r = c
        .command("publish", json!({"channel":"news","data":{"text":"hi"}}))
        .await
        .unwrap();
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = c.publication(T).await.unwrap();
    assert_eq!(p["channel"], "news");
    assert_eq!(p["pub"]["data"], json!({"text":"hi"}));
    assert_eq!(p["pub"]["offset"], 1);
    assert_eq!(p["pub"]["info"]["user"], "alice");

    let r = c
        .command("presence", json!({"channel":"news"}))
        .await
        .unwrap();
    let presence = r["presence"]["presence"].as_object().unwrap();
    assert_eq!(presence.len(), 1);
    assert_eq!(presence.values().next().unwrap()["user"], "alice");

    let r = c
        .command("presence_stats", json!({"channel":"news"}))
        .await
        .unwrap();
    assert_eq!(r["presence_stats"], json!({"num_clients":1,"num_users":1}));

    let r = c
        .command("history", json!({"channel":"news","limit":10}))
        .await
        .unwrap();
    let pubs = r["history"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0]["data"], json!({"text":"hi"}));
    assert_eq!(r["history"]["offset"], 1);

    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}));

    let r = c.command("send", json!({"data":{}})).await.unwrap();
    assert_eq!(err_code(&r), Some(108), "send has no backend yet: {r}");
    let r = c
        .command("rpc", json!({"method":"x","data":{}}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(108), "rpc has no backend yet: {r}");

    let r = c
        .command("refresh", json!({"token": s.token("alice", json!({}))}))
        .await
        .unwrap();
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 3500);

    // sub_refresh needs a subscription made with a subscription token.
    let tok = s.sub_token("alice", "private", json!({}));
    let r = c
        .command("subscribe", json!({"channel":"private","token":tok}))
        .await
        .unwrap();
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    let tok = s.sub_token("alice", "private", json!({}));
    let r = c
        .command("sub_refresh", json!({"channel":"private","token":tok}))
        .await
        .unwrap();
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");

    let r = c
        .command("unsubscribe", json!({"channel":"news"}))
        .await
        .unwrap();
    assert_eq!(r["unsubscribe"], json!({}));
    s.api("publish", json!({"channel":"news","data":"after"}))
        .await;
    // Nothing more arrives on news: subscribed again (without recovery),
    // the first news publication the client gets is one made after that.
    let r = c
        .command("subscribe", json!({"channel":"news"}))
        .await
        .unwrap();
    assert!(
        r["subscribe"]["publications"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "no recovery asked, none given: {r}"
    );
    s.api("publish", json!({"channel":"news","data":"marker"}))
        .await;
    let p = loop {
        let p = c.push(T).await.unwrap();
        if p["channel"] == "news" && p.get("pub").is_some() {
            break p;
        }
    };
    assert_eq!(
        p["pub"]["data"], "marker",
        "publication after unsubscribe: {p}"
    );
}

#[tokio::test]
async fn several_commands_in_one_frame() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.send_text("{\"id\":10,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":11,\"subscribe\":{\"channel\":\"b\"}}")
        .await
        .unwrap();
    let r10 = c.reply(10).await.unwrap();
    let r11 = c.reply(11).await.unwrap();
    assert!(r10.get("subscribe").is_some() && r11.get("subscribe").is_some());
}

#[tokio::test]
async fn error_codes() {
    let mut config = TestServer::dev_config();
    config.client.history_max_limit = 50;
    config.namespaces = vec![NamespaceConfig {
        name: "quiet".into(),
        options: ChannelOptions::default(),
    }];
    let s = TestServer::start_with(config).await;
    let mut c = s.client("alice").await;
    let cases = [
        (
            "unknown namespace",
            "subscribe",
            json!({"channel":"nope:x"}),
            102,
        ),
        ("empty channel", "subscribe", json!({"channel":""}), 107),
        (
            "control char",
            "subscribe",
            json!({"channel":"a\u{1}b"}),
            107,
        ),
        (
            "too long",
            "subscribe",
            json!({"channel":"x".repeat(256)}),
            107,
        ),
        (
            "private $ channel",
            "subscribe",
            json!({"channel":"$secret"}),
            103,
        ),
        (
            "presence off",
            "presence",
            json!({"channel":"quiet:x"}),
            108,
        ),
        ("history off", "history", json!({"channel":"quiet:x"}), 108),
        (
            "publish off",
            "publish",
            json!({"channel":"quiet:x","data":{}}),
            103,
        ),
        (
            "presence unsubscribed",
            "presence",
            json!({"channel":"other"}),
            103,
        ),
        (
            "history unsubscribed",
            "history",
            json!({"channel":"other"}),
            103,
        ),
        (
            "publish without data",
            "publish",
            json!({"channel":"news"}),
            107,
        ),
    ];
    for (what, method, body, code) in cases {
        let r = c.command(method, body).await.unwrap();
        assert_eq!(err_code(&r), Some(code), "{what}: {r}");
    }
    subscribe(&mut c, "news").await;
    let r = c
        .command("subscribe", json!({"channel":"news"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(105), "already subscribed: {r}");
    let r = c
        .command("history", json!({"channel":"news","limit":51}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(106), "history limit: {r}");
    let r = c
        .command(
            "history",
            json!({"channel":"news","limit":5,"since":{"offset":0,"epoch":"wrong"}}),
        )
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(112), "foreign epoch: {r}");
    c.send_text(r#"{"id":99,"frobnicate":{}}"#).await.unwrap();
    assert_eq!(
        err_code(&c.reply(99).await.unwrap()),
        Some(104),
        "unknown method"
    );
    // The connection is still usable after every error.
    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}));
}

#[tokio::test]
async fn channels_per_connection_are_limited() {
    let mut config = TestServer::dev_config();
    config.client.max_channels_per_connection = 3;
    let s = TestServer::start_with(config).await;
    let mut c = s.client("alice").await;
    for ch in ["a", "b", "c"] {
        subscribe(&mut c, ch).await;
    }
    let r = c
        .command("subscribe", json!({"channel":"d"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(106), "{r}");
    // Leaving one makes room again.
    c.command("unsubscribe", json!({"channel":"a"}))
        .await
        .unwrap();
    subscribe(&mut c, "d").await;
}

#[tokio::test]
async fn connect_token_checks() {
    let mut config = TestServer::dev_config();
    config.client.allow_anonymous_connect_without_token = false;
    let s = TestServer::start_with(config).await;
    let url = s.ws_url();

    let (_, r) = Client::connect(&url, "").await.unwrap();
    assert_eq!(err_code(&r), Some(101), "no token, anonymous off: {r}");

    let expired = s.token("a", json!({"exp": now_unix() - 10}));
    let (_, r) = Client::connect(&url, &expired).await.unwrap();
    assert_eq!(err_code(&r), Some(109), "expired: {r}");
    let early = s.token("a", json!({"nbf": now_unix() + 600}));
    let (_, r) = Client::connect(&url, &early).await.unwrap();
    assert_eq!(err_code(&r), Some(109), "not yet valid: {r}");

    let sub_token = s.sub_token("a", "news", json!({}));
    let mut c = Client::open(&url).await.unwrap();
    let err = c
        .command("connect", json!({"token": sub_token}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, groupcast_client::ClientError::Closed(Some((3500, _)))),
        "subscription token as connection token: {err}"
    );

    let forged = groupcast_edge::auth::mint_hs256("wrong-secret", &json!({"sub":"a"}));
    for token in [
        forged.as_str(),
        "garbage",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
    ] {
        let mut c = Client::open(&url).await.unwrap();
        let err = c
            .command("connect", json!({"token": token}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, groupcast_client::ClientError::Closed(Some((3500, _)))),
            "token {token}: {err}"
        );
    }
}

#[tokio::test]
async fn audience_and_issuer_are_enforced() {
    let mut config = TestServer::dev_config();
    config.client.token_audience = "app".into();
    config.client.token_issuer = "auth".into();
    let s = TestServer::start_with(config).await;
    let good = s.token("a", json!({"aud":"app","iss":"auth"}));
    let (_, r) = Client::connect(&s.ws_url(), &good).await.unwrap();
    assert!(r.get("connect").is_some(), "{r}");
    let bad = s.token("a", json!({"aud":"other","iss":"auth"}));
    let mut c = Client::open(&s.ws_url()).await.unwrap();
    let err = c
        .command("connect", json!({"token": bad}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, groupcast_client::ClientError::Closed(Some((3500, _)))),
        "{err}"
    );
}

#[tokio::test]
async fn connection_expires_without_refresh() {
    let mut config = TestServer::dev_config();
    config.client.expired_close_delay = Duration::ZERO;
    let s = TestServer::start_with(config).await;
    let token = s.token("a", json!({"exp": now_unix() + 1}));
    let (mut c, r) = Client::connect(&s.ws_url(), &token).await.unwrap();
    assert_eq!(r["connect"]["expires"], true);
    let code = c.closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3005));
}

#[tokio::test]
async fn server_side_subscriptions_from_token() {
    let s = TestServer::start().await;
    let token = s.token("a", json!({"channels":["feed"]}));
    let (mut c, r) = Client::connect(&s.ws_url(), &token).await.unwrap();
    assert!(r["connect"]["subs"]["feed"].is_object(), "{r}");
    s.api("publish", json!({"channel":"feed","data":{"x":1}}))
        .await;
    let p = c.publication(T).await.unwrap();
    assert_eq!(
        (p["channel"].clone(), p["pub"]["data"].clone()),
        (json!("feed"), json!({"x":1}))
    );
}

#[tokio::test]
async fn namespace_permissions() {
    let mut config = TestServer::dev_config();
    let base = ChannelOptions {
        allow_subscribe_for_client: true,
        allow_anonymous: true,
        ..Default::default()
    };
    config.namespaces = vec![
        NamespaceConfig {
            name: "sub".into(),
            options: ChannelOptions {
                allow_publish_for_subscriber: true,
                ..base.clone()
            },
        },
        NamespaceConfig {
            name: "members".into(),
            options: ChannelOptions {
                allow_anonymous: false,
                ..base.clone()
            },
        },
        NamespaceConfig {
            name: "dm".into(),
            options: ChannelOptions {
                allow_user_limited_channels: true,
                ..base.clone()
            },
        },
        NamespaceConfig {
            name: "private".into(),
            options: ChannelOptions {
                allow_subscribe_for_client: false,
                ..base.clone()
            },
        },
    ];
    let s = TestServer::start_with(config).await;
    let mut alice = s.client("alice").await;
    let mut carol = s.client("carol").await;
    let (mut anon, _) = Client::connect(&s.ws_url(), "").await.unwrap();

    // Publish only while subscribed.
    let r = alice
        .command("publish", json!({"channel":"sub:x","data":1}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    subscribe(&mut alice, "sub:x").await;
    let r = alice
        .command("publish", json!({"channel":"sub:x","data":1}))
        .await
        .unwrap();
    assert_eq!(r["publish"], json!({}), "{r}");

    // Anonymous excluded.
    let r = anon
        .command("subscribe", json!({"channel":"members:x"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    subscribe(&mut alice, "members:x").await;

    // User-limited channels.
    subscribe(&mut alice, "dm:chat#alice,bob").await;
    let r = carol
        .command("subscribe", json!({"channel":"dm:chat#alice,bob"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    let r = alice
        .command("subscribe", json!({"channel":"members:chat#alice"}))
        .await
        .unwrap();
    assert_eq!(
        err_code(&r),
        Some(103),
        "user-limited channels are off in members: {r}"
    );

    // Private namespace: subscription token required and checked.
    let r = alice
        .command("subscribe", json!({"channel":"private:x"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    let wrong_channel = s.sub_token("alice", "private:y", json!({}));
    let r = alice
        .command(
            "subscribe",
            json!({"channel":"private:x","token":wrong_channel}),
        )
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    let other_user = s.sub_token("carol", "private:x", json!({}));
    let r = alice
        .command(
            "subscribe",
            json!({"channel":"private:x","token":other_user}),
        )
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
    let expired = s.sub_token("alice", "private:x", json!({"exp": now_unix() - 5}));
    let r = alice
        .command("subscribe", json!({"channel":"private:x","token":expired}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(109), "{r}");
    let good = s.sub_token("alice", "private:x", json!({"info":{"role":"admin"}}));
    let r = alice
        .command("subscribe", json!({"channel":"private:x","token":good}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "{r}");
}

#[tokio::test]
async fn presence_join_and_leave() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    subscribe(&mut a, "room").await;
    // a sees its own join first.
    let j = a.push(T).await.unwrap();
    assert_eq!(j["join"]["info"]["user"], "alice", "{j}");
    subscribe(&mut b, "room").await;
    let j = a.push(T).await.unwrap();
    assert_eq!(j["channel"], "room");
    assert_eq!(j["join"]["info"]["user"], "bob", "{j}");
    // Invariant 3: after join(bob), presence shows bob.
    let r = a
        .command("presence", json!({"channel":"room"}))
        .await
        .unwrap();
    let users: Vec<&str> = r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    assert!(users.contains(&"alice") && users.contains(&"bob"), "{r}");
    b.command("unsubscribe", json!({"channel":"room"}))
        .await
        .unwrap();
    let l = a.push(T).await.unwrap();
    assert_eq!(l["leave"]["info"]["user"], "bob", "{l}");
    let r = a
        .command("presence_stats", json!({"channel":"room"}))
        .await
        .unwrap();
    assert_eq!(r["presence_stats"], json!({"num_clients":1,"num_users":1}));
    // Disconnecting also leaves.
    subscribe(&mut b, "room").await;
    let j = a.push(T).await.unwrap();
    assert_eq!(j["join"]["info"]["user"], "bob");
    b.close().await;
    let l = a.push(T).await.unwrap();
    assert_eq!(l["leave"]["info"]["user"], "bob", "{l}");
}

#[tokio::test]
async fn server_pings_and_pong_keeps_connection() {
    let mut config = TestServer::dev_config();
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await;
    // Three pings, each answered: a connection whose pongs did not count
    // would be closed 500 ms after the first (however busy the machine,
    // the server pings on its own clock, so this waits for them).
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pings < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected pings every second, got {pings} in 30 s"
        );
        match c.next(Duration::from_millis(200)).await {
            Ok(Incoming::Ping) => pings += 1,
            Ok(Incoming::Close(code)) => panic!("closed while answering pings: {code:?}"),
            _ => {}
        }
    }
    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}));
}

#[tokio::test]
async fn server_api_actions_reach_connections() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let (status, _) = s
        .api("subscribe", json!({"user":"alice","channel":"ops"}))
        .await;
    assert_eq!(status, 200);
    let p = c.push(T).await.unwrap();
    assert_eq!(p["channel"], "ops");
    assert!(p["subscribe"].is_object(), "{p}");
    s.api("publish", json!({"channel":"ops","data":{"k":1}}))
        .await;
    let p = c.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"k":1}));
    s.api("unsubscribe", json!({"user":"alice","channel":"ops"}))
        .await;
    let p = loop {
        let p = c.push(T).await.unwrap();
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(p["unsubscribe"]["code"], 2000);
    s.api(
        "disconnect",
        json!({"user":"alice","disconnect":{"code":3011,"reason":"x"}}),
    )
    .await;
    let code = c.closed(T).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3011));
}

#[tokio::test]
async fn subscription_token_expiry_and_sub_refresh() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let short = s.sub_token("alice", "$short", json!({"exp": now_unix() + 1}));
    let r = c
        .command("subscribe", json!({"channel":"$short","token":short}))
        .await
        .unwrap();
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    // An expired token cannot extend it.
    let expired = s.sub_token("alice", "$short", json!({"exp": now_unix() - 5}));
    let r = c
        .command("sub_refresh", json!({"channel":"$short","token":expired}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(110), "{r}");
    // Without a refresh the subscription ends with 2501 (resubscribe).
    let p = loop {
        let p = c.push(T).await.unwrap();
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(p["channel"], "$short");
    assert_eq!(p["unsubscribe"]["code"], 2501, "{p}");
    // It is gone: presence for it is refused as for any non-subscriber.
    let r = c
        .command("presence", json!({"channel":"$short"}))
        .await
        .unwrap();
    assert_eq!(err_code(&r), Some(103), "{r}");
}

#[tokio::test]
async fn refresh_with_a_bad_token_disconnects() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let expired = s.token("alice", json!({"exp": now_unix() - 5}));
    let err = c
        .command("refresh", json!({"token": expired}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, groupcast_client::ClientError::Closed(Some((3005, _)))),
        "expired: {err}"
    );
    let mut c = s.client("alice").await;
    let other = s.token("mallory", json!({}));
    let err = c
        .command("refresh", json!({"token": other}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, groupcast_client::ClientError::Closed(Some((3500, _)))),
        "another user's: {err}"
    );
    // The API can expire a connection too.
    let mut c = s.client("bob").await;
    s.api("refresh", json!({"user":"bob","expired":true})).await;
    let code = c.closed(T).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3005));
}

/// `allow_presence_for_client` / `allow_history_for_client` (Centrifugo's
/// names): a client that did not subscribe may ask presence and history of
/// a channel open to all; without them only subscribers may, and private
/// channels stay closed either way.
#[tokio::test]
async fn presence_and_history_for_clients_that_did_not_subscribe() {
    let mut config = TestServer::dev_config();
    let base = ChannelOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        presence: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
        ..ChannelOptions::default()
    };
    config.namespaces = vec![
        NamespaceConfig {
            name: "open".into(),
            options: ChannelOptions {
                allow_presence_for_client: true,
                allow_history_for_client: true,
                ..base.clone()
            },
        },
        NamespaceConfig {
            name: "closed".into(),
            options: base,
        },
    ];
    let s = TestServer::start_with(config).await;
    let mut a = s.client("a").await;
    for ch in ["open:x", "closed:x"] {
        subscribe(&mut a, ch).await;
        let (status, r) = s.api("publish", json!({"channel": ch, "data": 1})).await;
        assert_eq!(status, 200, "{r}");
    }
    let mut b = s.client("b").await;
    let r = b
        .command("presence", json!({"channel":"open:x"}))
        .await
        .unwrap();
    assert_eq!(
        r["presence"]["presence"].as_object().unwrap().len(),
        1,
        "{r}"
    );
    let r = b
        .command("presence_stats", json!({"channel":"open:x"}))
        .await
        .unwrap();
    assert_eq!(r["presence_stats"]["num_clients"], 1, "{r}");
    let r = b
        .command("history", json!({"channel":"open:x","limit":10}))
        .await
        .unwrap();
    assert_eq!(
        r["history"]["publications"].as_array().unwrap().len(),
        1,
        "{r}"
    );
    for (method, ch) in [
        ("presence", "closed:x"),
        ("history", "closed:x"),
        ("presence", "open:$private"),
        ("history", "open:$private"),
    ] {
        let r = b
            .command(method, json!({"channel": ch, "limit": 10}))
            .await
            .unwrap();
        assert_eq!(err_code(&r), Some(103), "{method} {ch}: {r}");
    }
}

/// `client.subscribe_to_personal`: every authenticated connection is
/// subscribed server-side to its user's personal channel at connect (in
/// `subs` of the reply) and receives what is published there; anonymous
/// connections are not.
#[tokio::test]
async fn every_user_connection_is_subscribed_to_its_personal_channel() {
    let mut config = TestServer::dev_config();
    config.client.subscribe_to_personal = true;
    config.client.personal_channel_namespace = "personal".into();
    config.namespaces = vec![NamespaceConfig {
        name: "personal".into(),
        options: ChannelOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            allow_recovery: true,
            ..ChannelOptions::default()
        },
    }];
    config.validate().unwrap();
    let s = TestServer::start_with(config.clone()).await;
    let (mut c, reply) = Client::connect(&s.ws_url(), &s.token("alice", json!({})))
        .await
        .unwrap();
    let subs = reply["connect"]["subs"].as_object().unwrap();
    assert!(subs.contains_key("personal:#alice"), "{reply}");
    assert_eq!(subs["personal:#alice"]["recoverable"], true, "{reply}");
    let (status, r) = s
        .api(
            "publish",
            json!({"channel":"personal:#alice","data":{"note":"hi"}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let p = c.push(T).await.unwrap();
    assert_eq!(p["channel"], "personal:#alice", "{p}");
    assert_eq!(p["pub"]["data"]["note"], "hi", "{p}");
    // Anonymous: nothing personal.
    let (_, reply) = Client::connect(&s.ws_url(), "").await.unwrap();
    assert!(reply["connect"]["subs"].is_null(), "{reply}");
    // The namespace must exist.
    config.namespaces.clear();
    let e = config.validate().unwrap_err();
    assert!(e.contains("client.personal_channel_namespace"), "{e}");
}

/// Leaving the publisher out: the API's `exclude_client` (Pusher's
/// `socket_id`) and the client's `publish` with `exclude_self` (Phoenix's
/// `broadcast_from`) skip that one client; everyone else gets it, and
/// history still holds it.
#[tokio::test]
async fn a_publication_can_leave_one_client_out() {
    let s = TestServer::start().await;
    let mut a = s.client("a").await;
    let mut b = s.client("b").await;
    subscribe(&mut a, "room").await;
    subscribe(&mut b, "room").await;
    let a_id = a
        .command("presence", json!({"channel":"room"}))
        .await
        .unwrap()["presence"]["presence"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, i)| i["user"] == "a")
        .map(|(id, _)| id.clone())
        .unwrap();
    let (status, r) = s
        .api(
            "publish",
            json!({"channel":"room","data":{"n":1},"exclude_client":a_id}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(b.publication(T).await.unwrap()["pub"]["data"]["n"], 1);
    let r = a
        .command(
            "publish",
            json!({"channel":"room","data":{"n":2},"exclude_self":true}),
        )
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(b.publication(T).await.unwrap()["pub"]["data"]["n"], 2);
    s.api("publish", json!({"channel":"room","data":{"n":3}}))
        .await;
    // A saw neither 1 (excluded by the API) nor 2 (its own), only 3.
    assert_eq!(a.publication(T).await.unwrap()["pub"]["data"]["n"], 3);
    assert_eq!(b.publication(T).await.unwrap()["pub"]["data"]["n"], 3);
    let r = a
        .command("history", json!({"channel":"room","limit":10}))
        .await
        .unwrap();
    let ns: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 3], "history keeps everything: {r}");
}
