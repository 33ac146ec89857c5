//! groupcast-edge
