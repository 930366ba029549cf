//! Message records.
