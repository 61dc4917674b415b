//! The transport floor: a gRPC service that only echoes, and its clients.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::client::Bidder;
use crate::proto::echo::{self as pb, EchoMessage, echo_client::EchoClient};

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

/// An echo payload about the size of a bid's bidder and amount.
const PAYLOAD: &[u8] = b"bench17:123456789";

fn message(tag: u64) -> EchoMessage {
    EchoMessage {
        tag,
        payload: PAYLOAD.to_vec(),
    }
}

/// A client of the echo service at `server` that connects at its first call, and again after a
/// failure.
fn echo_client(server: SocketAddr) -> anyhow::Result<EchoClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{server}"))?;
    Ok(EchoClient::new(endpoint.connect_lazy()))
}

/// A client of the echo service that makes one unary call per request, bid or read alike.
pub(crate) struct EchoUnary(EchoClient<Channel>);

impl EchoUnary {
    /// A client of the echo service at `server`.
    ///
    /// # Errors
    /// `server` does not make a URI.
    pub(crate) fn new(server: SocketAddr) -> anyhow::Result<Self> {
        echo_client(server).map(Self)
    }

    async fn call(&mut self, tag: u64) -> anyhow::Result<()> {
        self.0.unary(message(tag)).await?;
        Ok(())
    }
}

impl Bidder for EchoUnary {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        self.call(amount).await
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.call(0).await
    }
}

/// A client of the echo service that sends every request, bid or read alike, on one
/// bidirectional stream, opened at its first request and again after a failure.
pub(crate) struct EchoStream {
    client: EchoClient<Channel>,
    stream: Option<(mpsc::Sender<EchoMessage>, Streaming<EchoMessage>)>,
}

impl EchoStream {
    /// A client of the echo service at `server`.
    ///
    /// # Errors
    /// `server` does not make a URI.
    pub(crate) fn new(server: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            client: echo_client(server)?,
            stream: None,
        })
    }

    async fn call(&mut self, tag: u64) -> anyhow::Result<()> {
        let (requests, replies) = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let (requests, rx) = mpsc::channel(16);
                let replies = self
                    .client
                    .stream(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.stream.insert((requests, replies))
            }
        };
        let echoed = async {
            requests.send(message(tag)).await?;
            replies.message().await?.context("the echo stream ended")
        }
        .await;
        if echoed.is_err() {
            self.stream = None;
        }
        echoed.map(drop)
    }
}

impl Bidder for EchoStream {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        self.call(amount).await
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.call(0).await
    }
}
