//! The transport floor: a gRPC service that only echoes.

use tonic::{Status, Streaming};

use crate::proto::echo::{self as pb, EchoMessage};

/// The echo service: answers each message with itself.
#[derive(Debug, Default)]
pub struct EchoService;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    type StreamStream = Streaming<EchoMessage>;

    async fn unary(
        &self,
        req: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }

    async fn stream(
        &self,
        req: tonic::Request<Streaming<EchoMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

/// Serves the echo service on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve_echo(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(pb::echo_server::EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
