//! groupcast-client
