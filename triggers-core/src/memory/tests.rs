//! The store conformance kit over [`MemoryStore`].

use super::MemoryStore;

crate::store_conformance_tests!(|| async { MemoryStore::new() });
