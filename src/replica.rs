//! A replica's stream to the leader: join, prove and check the cluster secret, take the full
//! state, then apply every change in order and acknowledge it, until the leader fails, falls
//! silent or refuses us.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::auth::{self, ClusterSecret};
use crate::leader::Timing;
use crate::pb::{self, FromReplica, from_leader, from_replica};
use crate::process::{self, ClusterLock, Fenced};
use crate::replication::{Change, ClusterState, Member};
use crate::tls::{self, ServerTls};

/// The largest state a replica accepts in one message.
pub const MAX_STATE_BYTES: usize = 1 << 30;

/// Why following ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// Nothing accepted the connection, or the handshake failed before any state arrived.
    Unreachable(String),
    /// Something accepts connections on the replica port but says nothing within the timeout.
    /// When the stream had delivered a state, `leader` is who sent it. A member has fenced it.
    Silent { leader: Option<Member> },
    /// The stream ended or broke: the leader is gone. `leader` is who had sent the state.
    Lost { leader: Option<Member> },
    /// The leader refused this node for good (for example, its id is in use).
    Refused(Status),
    /// The node on the replica port could not prove that it holds the cluster secret: it is
    /// not this cluster's leader, and it gets nothing, not even this node's proof.
    Impostor(String),
}

/// A replica's state, shared with its terminal. Locked briefly per message, never across an
/// await.
pub type SharedState = Arc<Mutex<Option<ClusterState>>>;

/// How often per heartbeat a replica checks whether the leader has been silent too long.
const SILENCE_CHECKS_PER_HEARTBEAT: u32 = 4;

/// Follows the leader at `leader_addr` as `me`, keeping `shared` up to date. When `me` becomes a
/// member, it takes the cluster lock shared before it acknowledges anything as a member. A member
/// fences a silent leader before it returns.
pub async fn follow(
    leader_addr: SocketAddr,
    me: Member,
    secret: &ClusterSecret,
    tls: Option<&ServerTls>,
    timing: Timing,
    lock: &ClusterLock,
    shared: &SharedState,
) -> FollowEnd {
    let nonce = match auth::nonce() {
        Ok(n) => n,
        Err(e) => return FollowEnd::Unreachable(format!("no randomness for a challenge: {e}")),
    };
    let endpoint = match tls::endpoint(leader_addr, tls) {
        Ok(e) => e.connect_timeout(timing.timeout).tcp_nodelay(true),
        Err(e) => return FollowEnd::Unreachable(e),
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
            nonce: nonce.to_vec(),
        })),
    };
    if acks.try_send(join).is_err() {
        return FollowEnd::Unreachable("could not queue Join".into());
    }
    let response =
        match tokio::time::timeout(timing.timeout, client.follow(ReceiverStream::new(rx))).await {
            Err(_) => {
                if is_member(shared, &me) {
                    fence_silent_leader(leader_addr, None);
                }
                return FollowEnd::Silent { leader: None };
            }
            Ok(Err(status)) => {
                return refused_or(status, |s| FollowEnd::Unreachable(s.to_string()));
            }
            Ok(Ok(r)) => r,
        };
    let mut inbound = response.into_inner();
    // The leader proves itself first; only then does this replica answer with its own proof.
    let proven = match tokio::time::timeout(timing.timeout, inbound.message()).await {
        Err(_) => {
            if is_member(shared, &me) {
                fence_silent_leader(leader_addr, None);
            }
            return FollowEnd::Silent { leader: None };
        }
        Ok(Err(status)) => return refused_or(status, |s| FollowEnd::Unreachable(s.to_string())),
        Ok(Ok(None)) => return FollowEnd::Unreachable("the stream ended at once".into()),
        Ok(Ok(Some(first))) => match check_leader(secret, &nonce, first) {
            Ok((leader, their_nonce)) => {
                let proof = secret.replica_proof(&their_nonce, &nonce, &me);
                let prove = FromReplica {
                    msg: Some(from_replica::Msg::Prove(pb::Prove { proof })),
                };
                if acks.try_send(prove).is_err() {
                    return FollowEnd::Unreachable("could not queue the proof".into());
                }
                leader
            }
            Err(why) => {
                warn!("the node on the replica port is not this cluster's leader: {why}");
                return FollowEnd::Impostor(why);
            }
        },
    };
    // Who sent this stream's snapshot: known once it arrives, and it must be `proven`.
    let mut leader: Option<Member> = None;
    let mut member = is_member(shared, &me);
    // Checked four times per heartbeat, so a silent leader is noticed at most a quarter of a
    // heartbeat after the timeout.
    let mut tick = tokio::time::interval(timing.heartbeat / SILENCE_CHECKS_PER_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let message = tokio::select! {
            biased;
            message = inbound.message() => match message {
                Err(status) => return refused_or(status, |_| FollowEnd::Lost { leader }),
                Ok(None) => return FollowEnd::Lost { leader },
                Ok(Some(m)) => m,
            },
            // The leader's silence, measured on this replica's own ticks: a tick that comes
            // much later than due means this replica was stalled (paused, or starved), so the
            // silence was its own and the clock restarts.
            scheduled = tick.tick() => {
                let now = Instant::now();
                let late_by = now.saturating_duration_since(scheduled);
                if late_by > timing.heartbeat {
                    info!(?late_by, "this replica was stalled; restarting the leader's clock");
                    last_heard = now;
                } else if now.saturating_duration_since(last_heard) > timing.timeout {
                    if member {
                        // Fenced while this stream is still open, so a leader that was only
                        // slow never sees it end and fences this replica in return.
                        fence_silent_leader(leader_addr, leader);
                    }
                    return FollowEnd::Silent { leader };
                }
                continue;
            }
        };
        last_heard = Instant::now();
        let seq = message.seq;
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        let mut state = shared.lock().expect("state lock poisoned");
        match message.msg {
            Some(from_leader::Msg::Snapshot(snapshot)) => {
                let new = match ClusterState::try_from(snapshot) {
                    Ok(s) => s,
                    Err(e) => return protocol_error(leader, &format!("bad snapshot: {e}")),
                };
                if new.leader != proven {
                    return protocol_error(leader, "the state names another leader");
                }
                info!(
                    leader = %new.leader.id,
                    epoch = new.epoch,
                    version = new.version,
                    "received the full state"
                );
                leader = Some(new.leader);
                *state = Some(new);
            }
            Some(from_leader::Msg::Append(append)) => {
                let Some(current) = state.as_mut().filter(|_| leader.is_some()) else {
                    return protocol_error(leader, "changes before the state");
                };
                // The snapshot's version was bounded, and each change adds one.
                if append.first_version != current.version.saturating_add(1) {
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
            }
            Some(from_leader::Msg::Heartbeat(_)) => {}
            Some(from_leader::Msg::Challenge(_)) => {
                return protocol_error(leader, "a challenge after the handshake");
            }
            None => return protocol_error(leader, "empty message"),
        }
        let Some(current) = state.as_ref().filter(|_| leader.is_some()) else {
            return protocol_error(leader, "a heartbeat before the state");
        };
        if !member && current.has_member(&me) {
            // A member holds the cluster lock before its first ack as a member, so no node can
            // found a new cluster while it lives. Nobody holds it exclusively while a leader
            // is alive, so this succeeds.
            if !matches!(lock.try_shared(), Ok(true)) {
                return protocol_error(leader, "cannot take the cluster lock");
            }
            info!(version = current.version, "now a member");
            member = true;
        }
        let ack = FromReplica {
            msg: Some(from_replica::Msg::Ack(pb::Ack {
                seq,
                version: current.version,
            })),
        };
        drop(state);
        // Acks are cumulative: when the queue is full, the next ack carries this one.
        let _ = acks.try_send(ack);
    }
}

/// Checks the leader's half of the handshake: its proof over this replica's challenge. Returns
/// who the leader is and its challenge.
fn check_leader(
    secret: &ClusterSecret,
    ours: &[u8],
    first: pb::FromLeader,
) -> Result<(Member, Vec<u8>), String> {
    let Some(from_leader::Msg::Challenge(c)) = first.msg else {
        return Err("its first message is not a challenge".into());
    };
    let leader = c
        .leader
        .ok_or("the challenge names no leader")
        .and_then(|l| Member::try_from(l).map_err(|_| "the challenge names no valid leader"))?;
    if c.nonce.len() != auth::NONCE_LEN {
        return Err(format!("its challenge is not {} bytes", auth::NONCE_LEN));
    }
    if !secret.verify_leader(ours, &c.nonce, &leader, &c.proof) {
        return Err("wrong proof: it does not hold the cluster secret".into());
    }
    Ok((leader, c.nonce))
}

/// Whether `me` is a member in `shared`.
pub fn is_member(shared: &SharedState, me: &Member) -> bool {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    shared
        .lock()
        .expect("state lock poisoned")
        .as_ref()
        .is_some_and(|s| s.has_member(me))
}

/// Fences a leader that fell silent: the one that sent this stream's state, or, if none did,
/// whatever node holds the replica port without answering.
pub fn fence_silent_leader(leader_addr: SocketAddr, leader: Option<Member>) {
    match leader {
        Some(l) => match process::fence(&l) {
            Ok(Fenced::Killed) => warn!(leader = %l.id, pid = l.pid, "fenced the silent leader"),
            Ok(Fenced::AlreadyGone) => {}
            Err(e) => warn!(leader = %l.id, "could not fence the silent leader: {e}"),
        },
        None => match process::fence_port_holder(leader_addr) {
            Ok(Some(pid)) => warn!(pid, "fenced the silent holder of the replica port"),
            Ok(None) => {}
            Err(e) => warn!("could not fence the holder of the replica port: {e}"),
        },
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
