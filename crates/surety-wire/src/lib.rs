//! `surety-wire`: Surety's wire formats, defined once for both ends.
//!
//! - [`proto`]: the gRPC protocol, generated from `proto/surety.proto`: `surety-server`
//!   serves [`proto::surety_server`], `surety-client` calls [`proto::surety_client`]. The
//!   stream protocol and status codes: docs/grpc.md.
//! - [`rest`]: the REST API's JSON answers (and the error body), serde types that
//!   `surety-server` writes and the `surety` CLI reads.

pub mod rest;

/// Package `surety.v1`: messages, the `Surety` service's client and server.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("surety.v1");
}
