//! `surety-client`: the Rust client of a Surety server.
