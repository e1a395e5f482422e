//! `surety-server`: the network front of the embedded broker. REST (`rest`), gRPC
//! (`grpc`), `/metrics` and `/healthz` share one listening address.

pub mod grpc;
pub mod state;

pub use state::AppState;
