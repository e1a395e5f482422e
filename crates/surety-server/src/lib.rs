//! `surety-server`: the network front of the embedded broker. REST (`rest`), gRPC
//! (`grpc`), `/metrics` and `/healthz` share one listening address.
//!
//! - [`config`]: settings from flags, environment, a TOML file and defaults.
//! - [`server`]: opens the broker, binds, serves until shutdown, runs upkeep.
//! - [`rest`]: the `/v1` JSON API; [`auth`]: bearer tokens; [`metrics`]: `/metrics`.
//! - [`settle`]: the ack / nack batch rule REST and gRPC share.

pub mod auth;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod rest;
pub mod server;
pub mod settle;
pub mod state;

pub use auth::check_bearer;
pub use config::{Config, Settings};
pub use server::{Server, ServerError};
pub use state::AppState;
