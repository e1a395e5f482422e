//! A connection to a Surety server: one HTTP/2 channel (reconnected by tonic when it
//! breaks), with the bearer token added to every call. A `Client` is Surety's gRPC
//! transport: it implements the `surety-core` seam (`transport.rs`), so `Producer` and
//! `Consumer` run over it.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::pipeline::Pipeline;
use crate::proto::surety_client::SuretyClient;

/// Largest gRPC message either way; matches the server's limit.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub(crate) type Raw = SuretyClient<InterceptedService<Channel, BearerToken>>;

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid server url {url:?}: {source}")]
    InvalidUrl {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the token cannot be sent as a header value (it must be visible ASCII)")]
    InvalidToken,
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// A Surety server connection. Cheap to clone; clones share the connection and its
/// publish stream (publishes from every clone are pipelined on it).
#[derive(Debug, Clone)]
pub struct Client {
    raw: Raw,
    pub(crate) pipeline: Arc<Pipeline>,
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:7333`), sending `token` as
    /// `authorization: Bearer <token>` when given.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|source| ConnectError::InvalidUrl {
                url: url.to_owned(),
                source,
            })?;
        let auth = BearerToken::new(token)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let raw = SuretyClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        Ok(Client {
            pipeline: Arc::new(Pipeline::new(raw.clone())),
            raw,
        })
    }

    /// The generated client, for calls the typed API does not wrap.
    pub fn raw(&self) -> Raw {
        self.raw.clone()
    }
}

/// Adds the bearer token to each call.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ConnectError::InvalidToken)
            })
            .transpose()
            .map(BearerToken)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}
