//! The store conformance kit (being written).
