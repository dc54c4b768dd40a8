//! The ingestor (being written).
