//! HTTP calls for tests, through [`groupcast_client::http`] (reqwest): one
//! request per connection, headers as `Name: value\r\n` lines, the body as
//! bytes, a `101` answer (a WebSocket upgrade) ends at its head.

use std::net::SocketAddr;

/// One HTTP request, enough for API tests: `(status, body)`; panics on an
/// I/O error (see [`try_http_request`]).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http_request`] that reports an I/O error instead of panicking (for
/// callers that expect servers to fail under them). No time limit: wrap it
/// in one where a server may stop answering.
pub async fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    groupcast_client::http::send(
        &addr.to_string(),
        method,
        path,
        headers,
        body.to_vec(),
        None,
    )
    .await
}
