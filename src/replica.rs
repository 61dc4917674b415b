//! A replica's stream to the leader: join, take the full state, then apply every change in order
//! and acknowledge it, until the leader fails, falls silent or refuses us.

use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tracing::{debug, info};

use crate::leader::Timing;
use crate::pb::{self, FromReplica, from_leader, from_replica};
use crate::process::ClusterLock;
use crate::replication::{Change, ClusterState, Member};

/// The largest state a replica accepts in one message.
pub const MAX_STATE_BYTES: usize = 1 << 30;

/// Why following ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// Nothing accepted the connection, or the handshake failed before any state arrived.
    Unreachable(String),
    /// Something accepts connections on the replica port but says nothing within the timeout.
    /// When the stream had delivered a state, `leader` is who sent it.
    Silent { leader: Option<Member> },
    /// The stream ended or broke: the leader is gone. `leader` is who had sent the state.
    Lost { leader: Option<Member> },
    /// The leader refused this node for good (for example, its id is in use).
    Refused(Status),
}

/// Follows the leader at `leader_addr` as `me`, keeping `state` up to date. `on_state` is called
/// after every state change. Before it acknowledges its first state a node that is not yet a
/// member takes the cluster lock shared, so it is counted alive before it can become a member.
pub async fn follow(
    leader_addr: SocketAddr,
    me: Member,
    timing: Timing,
    lock: &ClusterLock,
    state: &mut Option<ClusterState>,
    mut on_state: impl FnMut(&ClusterState),
) -> FollowEnd {
    let endpoint = match Endpoint::from_shared(format!("http://{leader_addr}")) {
        Ok(e) => e.connect_timeout(timing.timeout).tcp_nodelay(true),
        Err(e) => return FollowEnd::Unreachable(e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return FollowEnd::Unreachable(e.to_string()),
    };
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_STATE_BYTES);
    let (acks, rx) = mpsc::channel(1024);
    let join = FromReplica {
        msg: Some(from_replica::Msg::Join(pb::Join {
            node: Some(me.into()),
        })),
    };
    if acks.try_send(join).is_err() {
        return FollowEnd::Unreachable("could not queue Join".into());
    }
    let response =
        match tokio::time::timeout(timing.timeout, client.follow(ReceiverStream::new(rx))).await {
            Err(_) => return FollowEnd::Silent { leader: None },
            Ok(Err(status)) => {
                return refused_or(status, |s| FollowEnd::Unreachable(s.to_string()));
            }
            Ok(Ok(r)) => r,
        };
    let mut inbound = response.into_inner();
    // Who sent this stream's snapshot: known once it arrives.
    let mut leader: Option<Member> = None;
    loop {
        let message = match tokio::time::timeout(timing.timeout, inbound.message()).await {
            Err(_) => return FollowEnd::Silent { leader },
            Ok(Err(status)) => return refused_or(status, |_| FollowEnd::Lost { leader }),
            Ok(Ok(None)) => return FollowEnd::Lost { leader },
            Ok(Ok(Some(m))) => m,
        };
        let seq = message.seq;
        match message.msg {
            Some(from_leader::Msg::Snapshot(snapshot)) => {
                let new = match ClusterState::try_from(snapshot) {
                    Ok(s) => s,
                    Err(e) => return protocol_error(leader, &format!("bad snapshot: {e}")),
                };
                if !new.has_member(&me) {
                    match lock.try_shared() {
                        Ok(true) => {}
                        _ => return protocol_error(leader, "cluster lock is held exclusively"),
                    }
                }
                info!(
                    leader = %new.leader.id,
                    epoch = new.epoch,
                    version = new.version,
                    "received the full state"
                );
                leader = Some(new.leader);
                on_state(&new);
                *state = Some(new);
            }
            Some(from_leader::Msg::Append(append)) => {
                let Some(current) = state.as_mut().filter(|_| leader.is_some()) else {
                    return protocol_error(leader, "changes before the state");
                };
                if append.first_version != current.version + 1 {
                    return protocol_error(
                        leader,
                        &format!(
                            "changes start at version {} but this replica is at {}",
                            append.first_version, current.version
                        ),
                    );
                }
                for change in append.changes {
                    match Change::try_from(change) {
                        Ok(c) => {
                            current.apply(&c);
                        }
                        Err(e) => return protocol_error(leader, &format!("bad change: {e}")),
                    }
                }
                debug!(version = current.version, "applied");
                leader = Some(current.leader);
                on_state(current);
            }
            Some(from_leader::Msg::Heartbeat(_)) => {}
            None => return protocol_error(leader, "empty message"),
        }
        let version = state.as_ref().map_or(0, |s| s.version);
        let ack = FromReplica {
            msg: Some(from_replica::Msg::Ack(pb::Ack { seq, version })),
        };
        // Acks are cumulative: when the queue is full, the next ack carries this one.
        let _ = acks.try_send(ack);
    }
}

fn refused_or(status: Status, otherwise: impl FnOnce(&Status) -> FollowEnd) -> FollowEnd {
    if status.code() == Code::AlreadyExists {
        FollowEnd::Refused(status)
    } else {
        otherwise(&status)
    }
}

fn protocol_error(leader: Option<Member>, what: &str) -> FollowEnd {
    tracing::warn!("protocol error from the leader: {what}");
    FollowEnd::Lost { leader }
}
