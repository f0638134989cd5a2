//! The raw tonic baselines: a hand-written tonic service (no codegen, no hub runtime)
//! doing the same work as the bench hub with the least machinery.
//!
//! - `Subscribe` (server streaming): the caller becomes a member; every broadcast is
//!   written to it as the same pre-encoded `Bytes` (a bounded queue per member).
//! - `Publish` (client streaming): each `BenchRequest{publish}` is encoded once as a
//!   `BenchResponse{on_tick}` and queued to every member without waiting.
//! - `Echo` (bidi): each `BenchRequest{echo}` is answered with `BenchResponse{id, echo}`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, StreamingService,
};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::BoxError;
use crate::bench::bench_request::Call;
use crate::bench::bench_response::Event;
use crate::bench::{BenchRequest, BenchResponse};

const SERVICE: &str = "bench.raw.Raw";
const SUBSCRIBE: &str = "/bench.raw.Raw/Subscribe";
const PUBLISH: &str = "/bench.raw.Raw/Publish";
const ECHO: &str = "/bench.raw.Raw/Echo";

/// Frames a member's queue holds (the hub's default outbound queue); a full queue drops.
const QUEUE: usize = 1024;

/// Writes pre-encoded messages as they are and decodes requests of type `D` with prost.
pub struct PreEncoded<D>(PhantomData<fn() -> D>);

impl<D> Default for PreEncoded<D> {
    fn default() -> Self {
        PreEncoded(PhantomData)
    }
}

impl<D: Message + Default + Send + 'static> Codec for PreEncoded<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = BytesEncoder;
    type Decoder = PreEncoded<D>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> PreEncoded<D> {
        PreEncoded(PhantomData)
    }
}

/// Copies pre-encoded bytes into the frame.
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: Message + Default> Decoder for PreEncoded<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The members: a snapshot replaced on subscribe, so a broadcast clones one `Arc`.
#[derive(Default)]
struct Members(RwLock<Arc<[mpsc::Sender<Bytes>]>>);

impl Members {
    fn add(&self, tx: mpsc::Sender<Bytes>) {
        let mut list = self.0.write().unwrap_or_else(|e| e.into_inner());
        *list = list
            .iter()
            .filter(|s| !s.is_closed())
            .cloned()
            .chain(std::iter::once(tx))
            .collect();
    }

    fn broadcast(&self, frame: &Bytes) {
        let list = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        for member in list.iter() {
            let _ = member.try_send(frame.clone());
        }
    }
}

/// The raw service.
#[derive(Clone, Default)]
pub struct RawServer {
    members: Arc<Members>,
}

impl NamedService for RawServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for RawServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let members = self.members.clone();
        match req.uri().path() {
            SUBSCRIBE => Box::pin(async move {
                let mut grpc = Grpc::new(PreEncoded::<BenchRequest>::default());
                Ok(grpc.server_streaming(SubscribeSvc(members), req).await)
            }),
            PUBLISH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<BenchResponse, BenchRequest>::default());
                Ok(grpc.client_streaming(PublishSvc(members), req).await)
            }),
            ECHO => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<BenchResponse, BenchRequest>::default());
                Ok(grpc.streaming(EchoSvc, req).await)
            }),
            other => {
                let status = Status::unimplemented(format!("unknown method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct SubscribeSvc(Arc<Members>);

impl ServerStreamingService<BenchRequest> for SubscribeSvc {
    type Response = Bytes;
    type ResponseStream = Outbound<Bytes>;
    type Future = BoxFuture<Response<Outbound<Bytes>>, Status>;

    fn call(&mut self, _request: Request<BenchRequest>) -> Self::Future {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.0.add(tx);
        let stream: Outbound<Bytes> = Box::pin(ReceiverStream::new(rx).map(Ok));
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

struct PublishSvc(Arc<Members>);

impl ClientStreamingService<BenchRequest> for PublishSvc {
    type Response = BenchResponse;
    type Future = BoxFuture<Response<BenchResponse>, Status>;

    fn call(&mut self, request: Request<Streaming<BenchRequest>>) -> Self::Future {
        let members = self.0.clone();
        Box::pin(async move {
            let mut inbound = request.into_inner();
            while let Some(req) = inbound.message().await? {
                if let Some(Call::Publish(p)) = req.call {
                    let push = BenchResponse {
                        event: Some(Event::OnTick(p.tick.unwrap_or_default())),
                        ..Default::default()
                    };
                    members.broadcast(&Bytes::from(push.encode_to_vec()));
                }
            }
            Ok(Response::new(BenchResponse::default()))
        })
    }
}

struct EchoSvc;

impl StreamingService<BenchRequest> for EchoSvc {
    type Response = BenchResponse;
    type ResponseStream = Outbound<BenchResponse>;
    type Future = BoxFuture<Response<Outbound<BenchResponse>>, Status>;

    fn call(&mut self, request: Request<Streaming<BenchRequest>>) -> Self::Future {
        let replies = request.into_inner().filter_map(|r| async move {
            match r {
                Ok(BenchRequest {
                    id,
                    call: Some(Call::Echo(e)),
                    ..
                }) => Some(Ok(BenchResponse {
                    id,
                    event: Some(Event::Echo(e)),
                    ..Default::default()
                })),
                Ok(_) => None,
                Err(status) => Some(Err(status)),
            }
        });
        let stream: Outbound<BenchResponse> = Box::pin(replies);
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

/// Serves the raw service on `listener` until the process exits.
pub async fn serve(listener: TcpListener) -> Result<(), BoxError> {
    tonic::transport::Server::builder()
        .add_service(RawServer::default())
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

async fn ready(channel: Channel) -> Result<tonic::client::Grpc<Channel>, BoxError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    Ok(grpc)
}

/// Subscribes: the stream of broadcasts.
pub async fn subscribe(channel: Channel) -> Result<Streaming<BenchResponse>, BoxError> {
    let mut grpc = ready(channel).await?;
    let codec = ProstCodec::<BenchRequest, BenchResponse>::default();
    let path = PathAndQuery::from_static(SUBSCRIBE);
    Ok(grpc
        .server_streaming(Request::new(BenchRequest::default()), path, codec)
        .await?
        .into_inner())
}

/// Opens the publish stream: what is sent on the returned queue is broadcast.
pub async fn publisher(channel: Channel) -> Result<mpsc::Sender<BenchRequest>, BoxError> {
    let mut grpc = ready(channel).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let codec = ProstCodec::<BenchRequest, BenchResponse>::default();
        let path = PathAndQuery::from_static(PUBLISH);
        let _ = grpc
            .client_streaming(Request::new(ReceiverStream::new(rx)), path, codec)
            .await;
    });
    Ok(tx)
}

/// Opens an echo stream fed by `requests`: the raw service's `Echo`, or with
/// `on_hub` the bench hub's `Connect` stream driven by a plain tonic client (the
/// hub's hello frame comes first; echo replies carry the request's id either way).
pub async fn echo(
    channel: Channel,
    requests: mpsc::Receiver<BenchRequest>,
    on_hub: bool,
) -> Result<Streaming<BenchResponse>, BoxError> {
    let mut grpc = ready(channel).await?;
    let codec = ProstCodec::<BenchRequest, BenchResponse>::default();
    let path = PathAndQuery::from_static(if on_hub {
        "/bench.v1.BenchHub/Connect"
    } else {
        ECHO
    });
    Ok(grpc
        .streaming(Request::new(ReceiverStream::new(requests)), path, codec)
        .await?
        .into_inner())
}

/// Joins `group` on a bench *hub* with a plain tonic client (no hub client runtime):
/// the `Connect` stream, the `join` call sent by hand, its reply awaited. What the
/// stream yields next are the group's pushes. Used to measure the hub server with the
/// same client as the raw baseline.
pub async fn hub_member(
    channel: Channel,
    group: &str,
) -> Result<(mpsc::Sender<BenchRequest>, Streaming<BenchResponse>), BoxError> {
    use crate::bench::JoinRequest;
    let mut grpc = ready(channel).await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(BenchRequest {
        id: 1,
        control: None,
        call: Some(Call::Join(JoinRequest {
            group: group.to_owned(),
        })),
    })
    .await
    .map_err(|_| "request stream closed")?;
    let codec = ProstCodec::<BenchRequest, BenchResponse>::default();
    let path = PathAndQuery::from_static("/bench.v1.BenchHub/Connect");
    let mut stream = grpc
        .streaming(Request::new(ReceiverStream::new(rx)), path, codec)
        .await?
        .into_inner();
    // The hello frame, then the join reply.
    while let Some(frame) = stream.message().await? {
        if frame.id == 1 {
            if let Some(e) = frame.error {
                return Err(format!("join failed: {}", e.message).into());
            }
            return Ok((tx, stream));
        }
    }
    Err("stream ended before the join reply".into())
}
