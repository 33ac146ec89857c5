//! `groupcast-tests`: cross-component tests, the real Centrifugo SDKs and
//! a browser against a live server. This library is intentionally empty;
//! the crate owns its test target and the scripts and backends the tests
//! run.
//!
//! # Layout
//! * `tests/sdk.rs`: the test target: centrifuge-js (JSON and protobuf,
//!   recovery, Fossil deltas), `cent` (the server API), centrifuge-python's
//!   own test suite, and pages driven in Chromium (relay snippet, demo
//!   page, dashboard, seed 004's relay flow).
//! * `sdk/`: the Node and Python scripts those tests run, with their pinned
//!   dependencies (`package.json`, `requirements.txt`).
//! * `backends/`: small application backends (event proxy, chat backend,
//!   webhook receiver), started by the edge's and the binary's tests.
//!
//! No Rust modules.
