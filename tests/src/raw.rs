//! A raw hub client for bad-input tests: sends arbitrary frame bytes on a hub's
//! `Connect` stream (or any path) and decodes what comes back as the hub's response
//! type, with no help from the client runtime (no pongs, no call ids, no checks).

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use hub_core::proto::server_control::Kind;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::transport::Channel;

/// Sends `Bytes` as they are; decodes responses as `R`.
pub struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for RawCodec<R> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawCodec<R>;
    type Decoder = RawCodec<R>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec::default()
    }
}

impl<R: Send + 'static> Encoder for RawCodec<R> {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<R: prost::Message + Default + Send + 'static> Decoder for RawCodec<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        let n = src.remaining();
        R::decode(src.copy_to_bytes(n))
            .map(Some)
            .map_err(|e| Status::internal(format!("test client could not decode a response: {e}")))
    }
}

/// A `Connect` stream opened by hand.
pub struct RawConn<R> {
    /// Request frames to send; `None` once the request side is closed.
    tx: Option<mpsc::Sender<Bytes>>,
    /// The response stream.
    pub stream: Streaming<R>,
}

/// How long a raw read waits before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl<R: prost::Message + Default + Send + 'static> RawConn<R> {
    /// Opens `path` on `channel` with `metadata` entries; returns the status if the
    /// server refuses the stream.
    pub async fn open(
        channel: Channel,
        path: &'static str,
        metadata: &[(&'static str, &str)],
    ) -> Result<Self, Status> {
        Self::open_with_queue(channel, path, metadata, 64).await
    }

    /// Like [`RawConn::open`], with a request queue of `queue` frames.
    pub async fn open_with_queue(
        channel: Channel,
        path: &'static str,
        metadata: &[(&'static str, &str)],
        queue: usize,
    ) -> Result<Self, Status> {
        Self::open_with_bin(channel, path, metadata, &[], queue).await
    }

    /// [`Self::open_with_queue`] with binary (`-bin`) metadata entries too.
    pub async fn open_with_bin(
        channel: Channel,
        path: &'static str,
        metadata: &[(&'static str, &str)],
        binary: &[(&'static str, &[u8])],
        queue: usize,
    ) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(queue);
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for (k, v) in metadata {
            request
                .metadata_mut()
                .insert(*k, v.parse().expect("ascii metadata"));
        }
        for (k, v) in binary {
            request
                .metadata_mut()
                .insert_bin(*k, tonic::metadata::BinaryMetadataValue::from_bytes(v));
        }
        let path = http::uri::PathAndQuery::from_static(path);
        let stream = grpc
            .streaming(request, path, RawCodec::<R>::default())
            .await?
            .into_inner();
        Ok(RawConn {
            tx: Some(tx),
            stream,
        })
    }

    /// Sends one frame, as it is.
    pub async fn send(&self, frame: impl Into<Bytes>) {
        self.tx
            .as_ref()
            .expect("request side still open")
            .send(frame.into())
            .await
            .expect("request stream open");
    }

    /// Sends one message, encoded.
    pub async fn send_msg(&self, msg: &impl prost::Message) {
        self.send(msg.encode_to_vec()).await;
    }

    /// Closes the request side of the stream (a clean client close).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next response frame, `Ok(None)` at a clean end, or the status the stream
    /// ended with. Fails the test if nothing comes within [`READ_TIMEOUT`].
    pub async fn next(&mut self) -> Result<Option<R>, Status> {
        tokio::time::timeout(READ_TIMEOUT, self.stream.message())
            .await
            .expect("no frame from the server in time")
    }
}

/// A response frame's framework fields, decoded from any hub's response type by
/// re-encoding it (the framework fields have the same numbers in every hub).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// The call answered, 0 for pushes and control.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Push sequence number.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// An error.
    #[prost(message, optional, tag = "3")]
    pub error: Option<hub_core::proto::CallError>,
    /// A control frame.
    #[prost(message, optional, tag = "15")]
    pub control: Option<hub_core::proto::ServerControl>,
}

impl Frame {
    /// The framework fields of `msg`.
    pub fn of(msg: &impl prost::Message) -> Frame {
        Frame::decode(msg.encode_to_vec().as_slice()).expect("a hub response frame")
    }

    /// The control kind, if this is a control frame.
    pub fn control(&self) -> Option<&Kind> {
        self.control.as_ref().and_then(|c| c.kind.as_ref())
    }

    /// Whether this is a ping or a hello (frames a test usually skips).
    pub fn is_chatter(&self) -> bool {
        matches!(
            self.control(),
            Some(Kind::Ping(_) | Kind::Hello(_) | Kind::Pong(_))
        )
    }

    /// The error's code, if this is an error frame.
    pub fn error_code(&self) -> Option<tonic::Code> {
        self.error.as_ref().map(|e| tonic::Code::from_i32(e.code))
    }
}

/// Reads until the next frame that is not a hello or ping; panics at the end of the stream.
pub async fn next_event<R: prost::Message + Default + Send + 'static>(conn: &mut RawConn<R>) -> R {
    loop {
        match conn.next().await {
            Ok(Some(r)) if Frame::of(&r).is_chatter() => continue,
            Ok(Some(r)) => return r,
            Ok(None) => panic!("stream ended cleanly while waiting for a frame"),
            Err(s) => panic!("stream ended with {s:?} while waiting for a frame"),
        }
    }
}

/// Reads to the end of the stream; returns the frames (hellos and pings left out)
/// and the status it ended with (`Code::Ok` for a clean end).
pub async fn drain<R: prost::Message + Default + Send + 'static>(
    conn: &mut RawConn<R>,
) -> (Vec<R>, Status) {
    let mut frames = Vec::new();
    loop {
        match conn.next().await {
            Ok(Some(r)) if Frame::of(&r).is_chatter() => {}
            Ok(Some(r)) => frames.push(r),
            Ok(None) => return (frames, Status::ok("")),
            Err(s) => return (frames, s),
        }
    }
}

/// A gRPC message frame: flag, big-endian length, body.
pub fn grpc_frame(flag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.put_u8(flag);
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out
}

/// Sends `body` (raw HTTP/2 DATA, gRPC framing included, then end of stream) as a
/// gRPC request to `path`, and reads the response as a stream of `R`.
///
/// `body` must be valid UTF-8 (the only raw body type at hand here is `String`).
pub async fn raw_http<R: prost::Message + Default + Send + 'static>(
    mut channel: Channel,
    authority: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Streaming<R>, Status> {
    use tower::Service;
    let body = String::from_utf8(body).expect("raw test bodies are ASCII");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("request");
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
    }
    Ok(Streaming::new_response(
        RawCodec::<R>::default(),
        body,
        parts.status,
        None,
        None,
    ))
}
