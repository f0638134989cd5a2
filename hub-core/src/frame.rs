//! Frames as they travel to clients.
//!
//! Every hub's response message has the same framework fields (see `hub.v1`):
//! `id = 1`, `seq = 2`, `error = 3`, `control = 15`. That lets the runtime encode
//! error and control frames for any hub without knowing its generated types, and
//! lets a pre-encoded push carry a per-connection sequence number: protobuf merges
//! concatenated encodings, so the writer appends `seq` (field 2) after the shared
//! bytes instead of re-encoding the message for each recipient.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::proto;

/// Field number of the call id in request and response frames.
pub const FIELD_ID: u32 = 1;
/// Field number of the push sequence number in response frames.
pub const FIELD_SEQ: u32 = 2;
/// Field number of the `hub.v1.CallError` in response frames.
pub const FIELD_ERROR: u32 = 3;
/// Field number of the control message in request and response frames.
pub const FIELD_CONTROL: u32 = 15;
/// The first field number a hub may use for its own calls, replies and pushes.
pub const FIRST_HUB_FIELD: u32 = 16;
/// The largest integer every `uint64` on the wire stays within: 2^53 - 1, the
/// largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
///
/// The server refuses call ids above it (`INVALID_ARGUMENT`) and keeps every
/// number it chooses (sequence numbers, nonces, durations, sizes) at or below it,
/// so that a client that decodes `uint64` as a JavaScript number never fails.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `n` as a wire integer: `n`, or [`MAX_SAFE_INTEGER`] if it is larger (a duration
/// in milliseconds of over 285,000 years, say), never a truncated value.
pub fn clamp_safe(n: u128) -> u64 {
    n.min(u128::from(MAX_SAFE_INTEGER)) as u64
}

/// One encoded response frame on its way to one client.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// The encoded response message, shared by every recipient of a broadcast.
    pub bytes: Bytes,
    /// Whether this is a push: pushes get a per-connection sequence number appended.
    pub push: bool,
    /// Pushes dropped just before this one on its connection (set by the outbox), so
    /// the client sees the gap in sequence numbers.
    pub skipped: u64,
    /// A frame the connection can do without (a heartbeat, a refusal of a frame over
    /// the rate limit): queued only while there is room, and it never holds back
    /// reading (set by [`crate::Outbox::offer`]).
    pub control: bool,
}

impl OutFrame {
    /// A push (broadcast or direct send).
    pub fn push(bytes: Bytes) -> Self {
        OutFrame {
            bytes,
            push: true,
            skipped: 0,
            control: false,
        }
    }

    /// A reply, error or control frame (no sequence number).
    pub fn reply(bytes: Bytes) -> Self {
        OutFrame {
            bytes,
            push: false,
            skipped: 0,
            control: false,
        }
    }

    /// The number of bytes this frame takes on the wire with sequence number `seq`.
    pub fn encoded_len(&self, seq: u64) -> usize {
        self.bytes.len()
            + if self.push {
                1 + encoded_len_varint(seq)
            } else {
                0
            }
    }

    /// Writes the frame, appending `seq` (field 2) when it is a push.
    pub fn write_to(&self, seq: u64, dst: &mut impl BufMut) {
        dst.put_slice(&self.bytes);
        if self.push {
            encode_key(FIELD_SEQ, WireType::Varint, dst);
            encode_varint(seq, dst);
        }
    }
}

fn frame_with(id: u64, field: u32, msg: &impl Message) -> Bytes {
    let body = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(24 + body);
    if id != 0 {
        encode_key(FIELD_ID, WireType::Varint, &mut buf);
        encode_varint(id, &mut buf);
    }
    encode_key(field, WireType::LengthDelimited, &mut buf);
    encode_varint(body as u64, &mut buf);
    // Cannot fail: the buffer was sized for the message.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// An error frame: `{id, error: {code, message}}`, without a scope. The server sends
/// [`call_error_frame`] and [`frame_error_frame`]. Every error frame's message is cut to
/// [`crate::quote::MAX_ERROR_MESSAGE_BYTES`], so it never grows with what a handler
/// put in it.
pub fn error_frame(id: u64, code: tonic::Code, message: impl Into<String>) -> Bytes {
    scoped_error_frame(id, proto::ErrorScope::Unspecified, 0, code, message)
}

/// The answer of a call that failed or was refused: `{id, error: {code, message,
/// scope: CALL, call}}`. `call` is the field number of the call case (0 if unknown).
/// With `id` 0 it tells the client which fire-and-forget call failed.
pub fn call_error_frame(
    id: u64,
    call: u32,
    code: tonic::Code,
    message: impl Into<String>,
) -> Bytes {
    scoped_error_frame(id, proto::ErrorScope::Call, call, code, message)
}

/// A request frame refused before it became a call (malformed, no call, a duplicate
/// id): `{id, error: {code, message, scope: FRAME, call}}`. It answers no call.
pub fn frame_error_frame(
    id: u64,
    call: u32,
    code: tonic::Code,
    message: impl Into<String>,
) -> Bytes {
    scoped_error_frame(id, proto::ErrorScope::Frame, call, code, message)
}

fn scoped_error_frame(
    id: u64,
    scope: proto::ErrorScope,
    call: u32,
    code: tonic::Code,
    message: impl Into<String>,
) -> Bytes {
    frame_with(
        id,
        FIELD_ERROR,
        &proto::CallError {
            code: code as i32,
            message: crate::quote::bound_message(message.into()),
            scope: scope as i32,
            call,
        },
    )
}

/// The framework fields of a request frame, read without decoding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// The call id (0 if absent or unreadable).
    pub id: u64,
    /// The field number of the call case (the last field numbered
    /// [`FIRST_HUB_FIELD`] or more, as protobuf's last-one-wins rule picks it).
    pub call: Option<u32>,
}

/// Reads a request frame's id and call case from its top-level keys. Cheap: it skips
/// over fields without decoding them, and stops at the first malformed key.
pub fn request_head(mut buf: &[u8]) -> RequestHead {
    use prost::encoding::{DecodeContext, decode_key, decode_varint, skip_field};
    let mut head = RequestHead::default();
    while !buf.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            break;
        };
        if tag == FIELD_ID && wire == WireType::Varint {
            match decode_varint(&mut buf) {
                Ok(id) => head.id = id,
                Err(_) => break,
            }
            continue;
        }
        if tag >= FIRST_HUB_FIELD {
            head.call = Some(tag);
        }
        if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            break;
        }
    }
    head
}

/// A control frame: `{control: ...}`.
pub fn control_frame(kind: proto::server_control::Kind) -> Bytes {
    frame_with(0, FIELD_CONTROL, &proto::ServerControl { kind: Some(kind) })
}

/// The control frame telling a member that `missed` pushes of `group` (0: how many is
/// unknown) were lost, and why (`ServerControl.pushes_lost`).
pub fn pushes_lost_frame(group: &str, missed: u64, reason: String) -> Bytes {
    control_frame(proto::server_control::Kind::PushesLost(proto::PushesLost {
        group: group.to_owned(),
        missed,
        reason,
    }))
}

/// Field numbers present at the top level of an encoded message, in order.
///
/// Used to tell "a frame with a call this server does not know" (an unknown field
/// number) from "a frame with no call at all". Stops at the first malformed key.
pub fn top_level_fields(mut buf: &[u8]) -> Vec<u32> {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            break;
        };
        out.push(tag);
        if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a generated hub response: the framework fields plus a push case.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Resp {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(uint64, tag = "2")]
        seq: u64,
        #[prost(message, optional, tag = "3")]
        error: Option<proto::CallError>,
        #[prost(message, optional, tag = "15")]
        control: Option<proto::ServerControl>,
        #[prost(string, tag = "100")]
        text: String,
    }

    #[test]
    fn clamp_safe_caps_at_2_pow_53_minus_1() {
        assert_eq!(MAX_SAFE_INTEGER, 9_007_199_254_740_991);
        assert_eq!(clamp_safe(0), 0);
        assert_eq!(clamp_safe(u128::from(MAX_SAFE_INTEGER)), MAX_SAFE_INTEGER);
        assert_eq!(
            clamp_safe(u128::from(MAX_SAFE_INTEGER) + 1),
            MAX_SAFE_INTEGER
        );
        // Not truncated: u64::MAX + 1 as u64 would be 0.
        assert_eq!(clamp_safe(u128::from(u64::MAX) + 1), MAX_SAFE_INTEGER);
        let forever = std::time::Duration::from_secs(u64::MAX).as_millis();
        assert_eq!(clamp_safe(forever), MAX_SAFE_INTEGER);
    }

    #[test]
    fn appended_seq_merges_into_the_message() {
        let shared = Bytes::from(
            Resp {
                text: "hi".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let frame = OutFrame::push(shared);
        let mut out = Vec::new();
        frame.write_to(300, &mut out);
        assert_eq!(out.len(), frame.encoded_len(300));
        let back = Resp::decode(&out[..]).unwrap();
        assert_eq!(back.seq, 300);
        assert_eq!(back.text, "hi");
    }

    #[test]
    fn generic_error_and_control_frames_decode_as_the_hub_type() {
        let e = Resp::decode(error_frame(9, tonic::Code::NotFound, "nope")).unwrap();
        assert_eq!(e.id, 9);
        assert_eq!(
            e.error.unwrap(),
            proto::CallError {
                code: 5,
                message: "nope".into(),
                scope: 0,
                call: 0,
            }
        );
        let e = Resp::decode(call_error_frame(0, 18, tonic::Code::Aborted, "x")).unwrap();
        let err = e.error.unwrap();
        assert_eq!(
            (e.id, err.scope(), err.call),
            (0, proto::ErrorScope::Call, 18)
        );
        let e = Resp::decode(frame_error_frame(7, 0, tonic::Code::AlreadyExists, "x")).unwrap();
        assert_eq!(
            (e.id, e.error.unwrap().scope()),
            (7, proto::ErrorScope::Frame)
        );
        let c = Resp::decode(control_frame(proto::server_control::Kind::Ping(
            proto::Ping {
                nonce: 4,
                last_rtt_us: 0,
            },
        )))
        .unwrap();
        assert!(
            matches!(c.control.unwrap().kind, Some(proto::server_control::Kind::Ping(p)) if p.nonce == 4)
        );
    }

    #[test]
    fn lists_top_level_fields() {
        let bytes = Resp {
            id: 1,
            text: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(top_level_fields(&bytes), vec![1, 100]);
        assert_eq!(
            request_head(&bytes),
            RequestHead {
                id: 1,
                call: Some(100)
            }
        );
        assert_eq!(request_head(&[0xff]), RequestHead::default());
        // id 9, a control message, call 16 with a body, then call 17: the last wins.
        let frame = [
            0x08, 0x09, 0x7a, 0x00, 0x82, 0x01, 0x01, 0x00, 0x8a, 0x01, 0x00,
        ];
        assert_eq!(
            request_head(&frame),
            RequestHead {
                id: 9,
                call: Some(17)
            }
        );
        assert_eq!(top_level_fields(&[0xff]), Vec::<u32>::new());
    }
}
