//! groupcast-core
