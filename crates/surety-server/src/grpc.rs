//! The gRPC data plane of `proto/surety.proto`: batched confirmed publish, streaming
//! consume with credits and acks, admin basics, dead-letter administration. Served as an
//! axum router next to REST on the same address. Status codes and the stream protocol:
//! docs/grpc.md.

mod consume;
mod convert;
mod dead_letters;
mod publish_stream;
mod service;
mod status;

use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::auth::check_bearer;
use crate::state::AppState;

pub use status::{ERROR_CODE_METADATA, status_of};

/// The wire protocol (`proto/surety.proto`), generated once in `surety-wire`.
pub use surety_wire::proto;

/// Largest gRPC message either way: room for a publish batch of several maximum-size
/// messages (a topic allows up to 4 MiB each).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC service as routes, to be merged into the server's router.
pub fn routes(state: AppState) -> axum::Router {
    let svc = proto::surety_server::SuretyServer::new(service::Service::new(state.clone()))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let svc = InterceptedService::new(svc, move |req: Request<()>| authorize(&state, req));
    tonic::service::Routes::new(svc).into_axum_router()
}

/// Every call, streams included, needs `authorization: Bearer <token>` when tokens are
/// configured.
fn authorize(state: &AppState, req: Request<()>) -> Result<Request<()>, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if check_bearer(state, header) {
        Ok(req)
    } else {
        Err(status::unauthenticated())
    }
}
