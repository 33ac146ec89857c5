//! groupcast-testkit
