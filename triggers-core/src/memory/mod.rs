//! In-memory EventStore (being written).
pub struct MemoryStore;
