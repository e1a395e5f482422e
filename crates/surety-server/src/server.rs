//! The server's life: open the broker, bind, serve REST, gRPC, `/metrics` and `/healthz`
//! on one address, run upkeep every [`MAINTAIN_EVERY`], the broker's lease sweeper
//! (expired leases become redeliveries or dead letters even when nobody fetches) and its
//! scrub (sealed segments CRC-checked in the background), and on shutdown stop
//! accepting, finish in-flight requests, stop upkeep, the sweeper and the scrub, and
//! close the broker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::serve::ListenerExt;
use surety_broker::{Broker, BrokerError, BrokerOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{TokenFileError, load_tokens};
use crate::config::Config;
use crate::state::AppState;
use crate::{grpc, metrics, rest};

/// How often retention and journal compaction run.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot open the data directory {dir}: {source}")]
    Broker { dir: String, source: BrokerError },
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A server that is bound and ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Router,
    addr: SocketAddr,
    state: AppState,
    config: Config,
}

impl Server {
    /// Opens the broker (recovering it), reads the token file, and binds the address.
    /// Connections wait in the backlog until [`run`](Server::run).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        metrics::install().map_err(ServerError::Metrics)?;
        let tokens = match &config.auth_token_file {
            Some(path) => Some(Arc::new(load_tokens(path)?)),
            None => None,
        };
        let dir = config.data.clone();
        let options = BrokerOptions {
            scrub_bytes_per_sec: config.scrub_bytes_per_sec,
            ..BrokerOptions::default()
        };
        // Recovery reads files (the logs' tails, the group journals): keep it off the
        // async workers.
        let broker = tokio::task::spawn_blocking(move || Broker::open(&dir, options))
            .await
            .expect("broker open panicked")
            .map_err(|source| ServerError::Broker {
                dir: config.data.display().to_string(),
                source,
            })?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let state = AppState {
            tokens,
            max_message_bytes: config.max_message_bytes,
            ..AppState::new(broker)
        };
        let server = Server {
            app: router(state.clone(), config.max_request_bytes),
            listener,
            addr,
            state,
            config,
        };
        if server.exposed_without_auth() {
            tracing::warn!(
                %addr,
                "listening on a non-loopback address WITHOUT auth: anyone who can reach it can \
                 read, publish and delete messages; set auth_token_file"
            );
        }
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Reachable from other machines and no token needed.
    pub fn exposed_without_auth(&self) -> bool {
        !self.addr.ip().is_loopback() && self.state.tokens.is_none()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests, stops upkeep
    /// and closes the broker.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop, stopped) = watch::channel(false);
        let upkeep = tokio::spawn(maintain(self.state.broker.clone(), stopped));
        // Leases re-scheduled by the broker at open expire from here on.
        let sweeper = self.state.broker.spawn_sweeper();
        // Checks the sealed segments that open trusted, in the background.
        let scrubber = match self.state.broker.spawn_scrubber() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the scrub; sealed segments are checked only when read");
                None
            }
        };
        tracing::info!(addr = %self.addr, data = %self.config.data.display(), "serving");
        let streams = self.state.shutdown.clone();
        // Answers are small and latency-bound: without TCP_NODELAY, Nagle plus delayed
        // ACKs hold each gRPC answer ~40 ms (measured by `surety bench server`).
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let served = axum::serve(listener, self.app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Ends open Consume streams; graceful shutdown waits for them.
                streams.send_replace(true);
            })
            .await;
        tracing::info!("stopped accepting; in-flight requests finished");
        let _ = stop.send(true);
        // A maintain run in progress finishes rather than being cut at an await point.
        let _ = upkeep.await;
        // A sweep cut midway is redone: the next open re-schedules every lease still
        // held, and expiring one is no answer anyone waits for.
        sweeper.abort();
        let _ = sweeper.await;
        if let Some(s) = scrubber {
            // Stops mid-segment; off the async workers, as it joins a thread.
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        self.state.broker.close();
        tracing::info!("broker closed");
        served.map_err(ServerError::Serve)
    }
}

/// Every route: `/healthz` open, REST and `/metrics` behind auth, gRPC (which checks
/// auth itself), and JSON answers for unknown paths and wrong methods.
pub fn router(state: AppState, max_request_bytes: usize) -> Router {
    let guarded = rest::routes()
        .route("/metrics", get(metrics::scrape))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rest::auth::require_bearer,
        ));
    let ours = Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state.clone());
    // tonic's router brings a gRPC "unimplemented" fallback; unknown paths get ours.
    ours.merge(grpc::routes(state).reset_fallback())
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Retention and compaction on a timer, until `stopped` turns true.
async fn maintain(broker: Broker, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MAINTAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; open just did the work
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = broker.maintain().await {
                    tracing::error!(error = %e, code = e.code(), "maintenance failed");
                }
            }
            _ = stopped.changed() => return,
        }
    }
}
