//! The gRPC face of a member (tonic): the `Raft` and `Manager` services of
//! `proto/raft.proto`, and [`GrpcTransport`], the [`Transport`] that calls them.
//!
//! Every frame carries the JSON of an [`Envelope`] or a [`Reply`]; the gRPC method names
//! the kind of request so that traffic is readable in tools and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response};

use crate::handle::Handle;
use crate::network::{Envelope, Reply, Rpc, Transport, TransportError};

/// Code generated from `proto/raft.proto`.
pub mod pb {
    tonic::include_proto!("shorthorn.raft.v1");
}

use pb::Frame;
use pb::manager_client::ManagerClient;
use pb::manager_server::{Manager, ManagerServer};
use pb::raft_client::RaftClient;
use pb::raft_server::{Raft, RaftServer};

/// Largest frame accepted either way (snapshots travel in chunks well below this).
pub const MAX_FRAME: usize = 64 << 20;

/// Answers gRPC requests with a member's [`Handle`].
#[derive(Clone)]
struct Service {
    handle: Handle,
}

impl Service {
    async fn answer(&self, request: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        let payload = &request.get_ref().payload;
        let envelope: Envelope = serde_json::from_slice(payload).map_err(|e| {
            let why = crate::log_store::undecodable_message(payload, &e);
            tracing::warn!("{why}");
            tonic::Status::invalid_argument(format!("undecodable envelope: {why}"))
        })?;
        let reply = self.handle.serve(envelope).await;
        let payload = serde_json::to_vec(&reply)
            .map_err(|e| tonic::Status::internal(format!("unencodable reply: {e}")))?;
        Ok(Response::new(Frame { payload }))
    }
}

#[tonic::async_trait]
impl Raft for Service {
    async fn append_entries(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn vote(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn install_snapshot(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
}

#[tonic::async_trait]
impl Manager for Service {
    async fn propose(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn read_index(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn join(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn remove(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn status(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn snapshot(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
    async fn local_state(&self, r: Request<Frame>) -> Result<Response<Frame>, tonic::Status> {
        self.answer(r).await
    }
}

/// Serves `handle` on `listener` until `shutdown` resolves.
pub async fn serve(
    handle: Handle,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = Service { handle };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            RaftServer::new(service.clone())
                .max_decoding_message_size(MAX_FRAME)
                .max_encoding_message_size(MAX_FRAME),
        )
        .add_service(
            ManagerServer::new(service)
                .max_decoding_message_size(MAX_FRAME)
                .max_encoding_message_size(MAX_FRAME),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The [`Transport`] over gRPC, with one lazily connected channel per address.
#[derive(Clone, Default)]
pub struct GrpcTransport {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcTransport {
    pub fn new() -> GrpcTransport {
        GrpcTransport::default()
    }

    fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TransportError::Unreachable(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A failed call: "not connected" is safe to retry, anything else may have been delivered.
fn classify(status: tonic::Status, timeout: Duration) -> TransportError {
    use std::error::Error as _;
    let mut detail = status.to_string();
    let mut source = status.source();
    while let Some(err) = source {
        detail.push_str(": ");
        detail.push_str(&err.to_string());
        source = err.source();
    }
    // Unreachable promises the request never left (safe to resend); only a refused or
    // failed connect says so. A connection reset mid-call is an unknown outcome.
    let never_sent = detail.contains("Connection refused")
        || detail.contains("tcp connect error")
        || detail.contains("error trying to connect");
    match status.code() {
        tonic::Code::Unavailable if never_sent => TransportError::Unreachable(detail),
        tonic::Code::Unavailable
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown => TransportError::TimedOut(timeout),
        _ => TransportError::Protocol(detail),
    }
}

async fn call_channel(
    channel: Channel,
    envelope: Envelope,
    timeout: Duration,
) -> Result<Reply, TransportError> {
    let payload =
        serde_json::to_vec(&envelope).map_err(|e| TransportError::Protocol(e.to_string()))?;
    let mut request = Request::new(Frame { payload });
    request.set_timeout(timeout);
    let raft = || {
        RaftClient::new(channel.clone())
            .max_decoding_message_size(MAX_FRAME)
            .max_encoding_message_size(MAX_FRAME)
    };
    let manager = || {
        ManagerClient::new(channel.clone())
            .max_decoding_message_size(MAX_FRAME)
            .max_encoding_message_size(MAX_FRAME)
    };
    let call = async {
        match envelope.rpc {
            Rpc::AppendEntries(_) => raft().append_entries(request).await,
            Rpc::Vote(_) => raft().vote(request).await,
            Rpc::InstallSnapshot(_) => raft().install_snapshot(request).await,
            Rpc::Propose(_) => manager().propose(request).await,
            Rpc::ReadIndex => manager().read_index(request).await,
            Rpc::Join { .. } => manager().join(request).await,
            Rpc::Remove { .. } => manager().remove(request).await,
            Rpc::Status => manager().status(request).await,
            Rpc::Snapshot { .. } => manager().snapshot(request).await,
            Rpc::LocalState => manager().local_state(request).await,
        }
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(status)) => return Err(classify(status, timeout)),
        Err(_) => return Err(TransportError::TimedOut(timeout)),
    };
    serde_json::from_slice(&response.get_ref().payload)
        .map_err(|e| TransportError::Protocol(format!("undecodable reply: {e}")))
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        addr: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, TransportError>> {
        match self.channel(addr) {
            Ok(channel) => call_channel(channel, envelope, timeout).boxed(),
            Err(err) => futures::future::ready(Err(err)).boxed(),
        }
    }
}
