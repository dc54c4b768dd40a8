//! The worker queue (being written).
