//! `groupcast probe`: checks a running deployment end to end, as a user
//! would see it. A client connects over WebSocket at `--url`, subscribes to
//! a fresh channel, and a publication made through the server API at the
//! same URL must reach it. Behind a load balancer the two usually land on
//! different edges, so the check crosses the backbone. The Helm chart's
//! `helm test` runs it; operators can run it against any deployment.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use groupcast_client::{http, Client};
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::Config;
use serde_json::{json, Value};

#[derive(Args)]
pub struct ProbeArgs {
    /// Where clients and the API are served: `http://HOST:PORT` (an edge, a
    /// Service or a load balancer).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Channel to use (default: `groupcast-probe-<random>`); the token's
    /// user must be allowed to subscribe to it.
    #[arg(long)]
    channel: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Server API key (default: `api.key` from config/env).
    #[arg(long)]
    api_key: Option<String>,
    /// HMAC secret for the probe's connection token (default:
    /// `client.token_hmac_secret` from config/env).
    #[arg(long)]
    token_hmac_secret: Option<String>,
    /// TOML configuration file to read the key and the secret from.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `http://host:port` → `host:port`. TLS is not spoken here: probe the
/// plain listener (inside the cluster) or put the probe behind the TLS
/// terminator.
fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| format!("--url {url:?}: use http://HOST:PORT"))?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        bail!("--url {url:?}: use http://HOST:PORT, no path");
    }
    Ok(hp)
}

pub fn probe_cmd(args: ProbeArgs) -> anyhow::Result<()> {
    let config = Config::load(
        Config::default(),
        args.config.as_deref(),
        crate::overrides(&[
            ("api.key", args.api_key.map(Value::String)),
            (
                "client.token_hmac_secret",
                args.token_hmac_secret.map(Value::String),
            ),
        ]),
    )
    .map_err(anyhow::Error::msg)?;
    if config.api.key.is_empty() {
        bail!("no API key: pass --api-key, set GROUPCAST_API__KEY, or api.key in --config");
    }
    let hp = host_port(&args.url)?.to_string();
    let channel = args
        .channel
        .unwrap_or_else(|| format!("groupcast-probe-{}", crate::random_hex(1)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let outcome = runtime
        .block_on(async { tokio::time::timeout(args.timeout, run(&hp, &config, &channel)).await });
    match outcome {
        Ok(Ok(report)) => {
            println!("ok: {report}; {} ms in all", started.elapsed().as_millis());
            Ok(())
        }
        Ok(Err(e)) => Err(e.context(format!("probe of {} failed", args.url))),
        Err(_) => bail!(
            "probe of {} failed: no answer within {:?}",
            args.url,
            args.timeout
        ),
    }
}

async fn run(hp: &str, config: &Config, channel: &str) -> anyhow::Result<String> {
    let secret = &config.client.token_hmac_secret;
    let token = if secret.is_empty() {
        String::new()
    } else {
        mint_hs256(
            secret,
            &json!({ "sub": "groupcast-probe", "exp": now_unix() + 300 }),
        )
    };
    let ws = format!("ws://{hp}/connection/websocket");
    let (mut client, reply) = Client::connect(&ws, &token)
        .await
        .with_context(|| format!("WebSocket {ws}"))?;
    let connected = reply
        .get("connect")
        .with_context(|| format!("connect refused: {reply}"))?;
    let client_id = connected["client"].as_str().unwrap_or("?").to_string();
    let sub = client
        .command("subscribe", json!({ "channel": channel }))
        .await?;
    if sub.get("error").is_some() {
        bail!("subscribe to {channel:?} refused: {sub}");
    }
    // Publish until the publication arrives: the first may race the
    // subscription reaching the edge that serves the API call.
    let nonce = crate::random_hex(1);
    let auth = format!("Authorization: apikey {}\r\n", config.api.key);
    for attempt in 1.. {
        let body = json!({ "channel": channel, "data": { "probe": nonce, "attempt": attempt } });
        let (status, text) = http::request(
            hp,
            "POST",
            "/api/publish",
            &auth,
            &body.to_string(),
            Duration::from_secs(5),
        )
        .await
        .with_context(|| format!("API publish at {hp}"))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 || answer.get("error").is_some() {
            bail!("API publish answered {status}: {text}");
        }
        match client.publication(Duration::from_secs(1)).await {
            Ok(p) if p["pub"]["data"]["probe"] == nonce => {
                client.close().await;
                return Ok(format!(
                    "client {client_id} on {channel:?} received API publish #{attempt}"
                ));
            }
            Ok(other) => bail!("unexpected publication: {other}"),
            Err(groupcast_client::ClientError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn urls_are_plain_http_host_and_port() {
        assert_eq!(host_port("http://gc:8000").unwrap(), "gc:8000");
        assert_eq!(host_port("http://10.0.0.1:8000/").unwrap(), "10.0.0.1:8000");
        assert_eq!(host_port("ws://[::1]:8000").unwrap(), "[::1]:8000");
        for bad in [
            "https://gc:443",
            "gc:8000",
            "http://gc",
            "http://gc:8000/api",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }
}
