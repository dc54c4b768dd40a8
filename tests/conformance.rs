//! The conformance kit reached the way a backend author outside this workspace reaches it:
//! through the facade's `conformance` feature, with `triggers` as the only name in scope.
//! (The in-memory store stands in for "my store".)

triggers::store_conformance_tests!(|| async { triggers::MemoryStore::new() });
