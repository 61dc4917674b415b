//! A client session: one stream of requests, each answered in the stream under its tag. The
//! session reads a request only once there is room for its reply, refuses those beyond its
//! rate unapplied, and hands the valid ones to the leader task.

use std::time::Instant;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::admission::{Admission, Credentials, session_request};
use crate::leader::{Event, LeaderHandle, ReplyTo};
use crate::limits::RateLimit;
use crate::pb;

/// The most replies one client session may have pending (in flight or not yet sent); beyond
/// that the session stops reading requests until the client reads its replies.
pub const SESSION_IN_FLIGHT: usize = 1024;

/// Serves the session whose requests are `inbound`, with the leader behind `leader`, and
/// returns the stream of its replies. The session ends when the client ends its stream or
/// breaks it (the reason is the last reply), or when the leader leaves (`UNAVAILABLE`).
pub(super) fn serve(
    mut inbound: Streaming<pb::SessionRequest>,
    leader: LeaderHandle,
    admission: Admission,
) -> ReceiverStream<Result<pb::SessionReply, Status>> {
    let (stream, replies) = tokio::sync::mpsc::channel(SESSION_IN_FLIGHT);
    tokio::spawn(async move {
        let mut rate = RateLimit::new(admission.session_rate, Instant::now());
        let mut credentials = Credentials::default();
        loop {
            // A slot for the reply first: a client that does not read is not read either.
            let Ok(slot) = stream.clone().reserve_owned().await else {
                return;
            };
            let message = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(m)) => m,
                    // The client ended the stream.
                    Ok(None) => return,
                    // Malformed or oversized: the stream ends with the reason.
                    Err(status) => {
                        slot.send(Err(status));
                        return;
                    }
                },
                // The leader left: the client goes on with its successor.
                () = leader.stopped() => {
                    slot.send(Err(Status::unavailable("the leader left")));
                    return;
                }
            };
            let tag = message.tag;
            if !rate.allow(Instant::now()) {
                let status = Status::resource_exhausted(format!(
                    "more than {} requests per second on this session; not applied",
                    admission.session_rate
                ));
                slot.send(Ok(error_reply(tag, &status)));
                continue;
            }
            match session_request(message.op, &admission, &mut credentials) {
                Ok(request) => {
                    let reply = ReplyTo::Session { tag, slot };
                    if let Err(status) = leader.send(Event::Request { request, reply }).await {
                        let _ = stream.send(Ok(error_reply(tag, &status))).await;
                        return;
                    }
                }
                Err(status) => {
                    slot.send(Ok(error_reply(tag, &status)));
                }
            }
        }
    });
    ReceiverStream::new(replies)
}

/// The reply of a request refused with `status`.
fn error_reply(tag: u64, status: &Status) -> pb::SessionReply {
    pb::SessionReply {
        tag,
        reply: Some(pb::session_reply::Reply::Error(pb::ErrorReply {
            code: status.code() as i32,
            message: status.message().to_string(),
        })),
    }
}
