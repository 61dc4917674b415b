//! A cluster's records in etcd, and the transactions that change them (docs/design.md,
//! "Multi-host mode"). Under the key prefix of the cluster (`--cluster`, default `auction`):
//!
//! - `PREFIX/nodes/ID`: where node ID serves ([`NodeRecord`]), written by the node itself;
//! - `PREFIX/leader`: the leader's id; the key's *modification revision* is the leader's epoch,
//!   unique and growing, because etcd numbers every change of its store;
//! - `PREFIX/members`: the member ids in succession order, the leader among them.
//!
//! Each change of leadership or membership is one transaction that compares the leader key's
//! revision with the epoch its writer holds, so at most one leader's change can win per epoch:
//! - founding ([`Registry::found`]) succeeds only while no leader key exists;
//! - a takeover ([`Registry::take_over`]) succeeds only if the leader key still holds the epoch
//!   the member followed and the member list is the one it read and lists it;
//! - a membership change ([`Registry::set_members`]) succeeds only while the writer's epoch is
//!   the leader key's; otherwise the writer learns it was deposed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::access::{AccessError, Credentials, EtcdAccess, Token};
use super::api::{
    AuthenticateRequest, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, auth_client,
    compare, kv_client::KvClient, request_op,
};
use crate::types::NodeId;

/// How long one request to etcd may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where one node serves: the address its replicas dial when it leads, and the one clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u16,
    pub replica: SocketAddr,
    pub client: SocketAddr,
}

/// The current leader and the epoch it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub leader: NodeId,
    /// The revision of the transaction that made it leader.
    pub epoch: u64,
}

/// The member list and the revision it was written at (for a compare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// In succession order.
    pub ids: Vec<NodeId>,
    /// The `members` key's modification revision; 0 when it does not exist.
    pub revision: u64,
}

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Unavailable(String),
    /// A record in etcd is not what this project writes there.
    #[error("etcd holds a malformed {key}: {why}")]
    Malformed { key: String, why: String },
    /// The writer's epoch is no longer the leader key's: another node leads.
    #[error("another node leads now")]
    Deposed,
    /// etcd refused this node's credentials, or asks for some and none were given.
    #[error("etcd refused access: {0}")]
    Denied(String),
    /// The options to reach etcd are unusable.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// The records of one cluster in etcd.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Sends [`Self::token`] with every request.
    kv: KvClient<InterceptedService<Channel, Token>>,
    /// Signs in with [`Credentials`], when given, for the token.
    auth: Option<(auth_client::AuthClient<Channel>, Credentials)>,
    token: Token,
    /// `CLUSTER/`, under which every key of the cluster lives.
    prefix: String,
}

impl Registry {
    /// A registry of cluster `cluster` at the etcd `endpoints` (URLs such as
    /// `http://127.0.0.1:2379`), over plain HTTP without a user: [`Self::connect`] with
    /// [`EtcdAccess::plain`].
    ///
    /// # Errors
    /// As for [`Self::connect`].
    pub fn new(
        endpoints: &[String],
        cluster: &str,
        local: Option<IpAddr>,
    ) -> Result<Self, RegistryError> {
        Self::connect(&EtcdAccess::plain(endpoints), cluster, local)
    }

    /// A registry of cluster `cluster` in the etcd that `access` reaches; requests go to any
    /// endpoint that answers, each within [`REQUEST_TIMEOUT`], from the address `local` if given
    /// (a node's own `--host`, so that a packet filter between hosts sees its requests as that
    /// host's), signed in as `access`'s user if any. Connects lazily; must be called inside a
    /// Tokio runtime.
    ///
    /// # Errors
    /// [`RegistryError::Access`] for an endpoint that is not a URL or does not match the TLS
    /// options.
    pub fn connect(
        access: &EtcdAccess,
        cluster: &str,
        local: Option<IpAddr>,
    ) -> Result<Self, RegistryError> {
        let channel = access.channel(local)?;
        let token = Token::default();
        Ok(Self {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            auth: access
                .credentials
                .clone()
                .map(|c| (auth_client::AuthClient::new(channel), c)),
            token,
            prefix: format!("{cluster}/"),
        })
    }

    /// Runs one KV request, signed in first if a user is configured and not yet signed in, and
    /// once more after signing in again if etcd dropped the token (it expires when unused).
    async fn call<T, F>(
        &self,
        request: impl Fn(KvClient<InterceptedService<Channel, Token>>) -> F,
    ) -> Result<T, RegistryError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.auth.is_some() && !self.token.is_set() {
            self.sign_in().await?;
        }
        match within(request(self.kv.clone())).await {
            Err(RegistryError::Denied(why)) if self.auth.is_some() && stale_token(&why) => {
                self.sign_in().await?;
                within(request(self.kv.clone())).await
            }
            other => other,
        }
    }

    /// Gets a token for the configured user.
    async fn sign_in(&self) -> Result<(), RegistryError> {
        let Some((client, credentials)) = &self.auth else {
            return Ok(());
        };
        let reply = within(client.clone().authenticate(AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        }))
        .await
        .map_err(|e| match e {
            RegistryError::Denied(why) => {
                RegistryError::Denied(format!("user {}: {why}", credentials.user))
            }
            other => other,
        })?;
        let token = reply
            .token
            .parse()
            .map_err(|_| malformed("auth token", &"not ASCII"))?;
        self.token.set(token);
        Ok(())
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// Records where node `node.id` serves.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`].
    pub async fn register(&self, node: &NodeRecord) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(node).map_err(|e| unavailable(&e))?;
        let put = PutRequest {
            key: self.key(&format!("nodes/{}", node.id)),
            value,
        };
        self.call(|mut kv| {
            let put = put.clone();
            async move { kv.put(put).await }
        })
        .await?;
        Ok(())
    }

    /// Where node `id` serves, if it registered.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`], or [`RegistryError::Malformed`].
    pub async fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, RegistryError> {
        let key = format!("nodes/{id}");
        match self.get(&key).await? {
            None => Ok(None),
            Some((value, _)) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| malformed(&key, &e)),
        }
    }

    /// Who leads, if anyone does.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`], or [`RegistryError::Malformed`].
    pub async fn leadership(&self) -> Result<Option<Leadership>, RegistryError> {
        match self.get("leader").await? {
            None => Ok(None),
            Some((value, revision)) => Ok(Some(Leadership {
                leader: parse_id(&value).ok_or_else(|| malformed("leader", &"not an id"))?,
                epoch: revision,
            })),
        }
    }

    /// The member list.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`], or [`RegistryError::Malformed`].
    pub async fn members(&self) -> Result<Members, RegistryError> {
        match self.get("members").await? {
            None => Ok(Members {
                ids: Vec::new(),
                revision: 0,
            }),
            Some((value, revision)) => Ok(Members {
                ids: parse_ids(&value).ok_or_else(|| malformed("members", &"not ids"))?,
                revision,
            }),
        }
    }

    /// Founds the cluster with `me` as its leader and only member, if nobody leads: returns
    /// the epoch, or `None` when a leader key exists.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`].
    pub async fn found(&self, me: NodeId) -> Result<Option<u64>, RegistryError> {
        let compare = vec![self.compare_create("leader", 0)];
        let success = vec![
            self.put("leader", me.to_string().into_bytes()),
            self.put("members", ids_value(&[me])),
        ];
        self.txn(compare, success).await
    }

    /// Makes member `me` the leader in place of the one of `epoch`, and drops that one from
    /// `members` (read before, at its revision): succeeds only if both are unchanged and list
    /// `me`. Returns the new epoch, or `None` when another change came first.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`].
    pub async fn take_over(
        &self,
        me: NodeId,
        epoch: u64,
        old: NodeId,
        members: &Members,
    ) -> Result<Option<u64>, RegistryError> {
        if !members.ids.contains(&me) {
            return Ok(None);
        }
        let remaining: Vec<NodeId> = members.ids.iter().copied().filter(|m| *m != old).collect();
        let compare = vec![
            self.compare_mod("leader", epoch),
            self.compare_mod("members", members.revision),
        ];
        let success = vec![
            self.put("leader", me.to_string().into_bytes()),
            self.put("members", ids_value(&remaining)),
        ];
        self.txn(compare, success).await
    }

    /// Founds a new cluster with `me` as its leader and only member in place of the one that
    /// `lead` and `members` (read before) describe, whose every member the operator says is dead
    /// (`auction-node --new-cluster`): succeeds only if both are unchanged. Returns the new
    /// epoch, or `None` when another change came first.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`].
    pub async fn found_anew(
        &self,
        me: NodeId,
        lead: Leadership,
        members: &Members,
    ) -> Result<Option<u64>, RegistryError> {
        let compare = vec![
            self.compare_mod("leader", lead.epoch),
            self.compare_mod("members", members.revision),
        ];
        let success = vec![
            self.put("leader", me.to_string().into_bytes()),
            self.put("members", ids_value(&[me])),
        ];
        self.txn(compare, success).await
    }

    /// Writes the member list as the leader of `epoch`.
    ///
    /// # Errors
    /// [`RegistryError::Deposed`] when `epoch` is no longer the leader key's;
    /// [`RegistryError::Unavailable`].
    pub async fn set_members(&self, epoch: u64, ids: &[NodeId]) -> Result<(), RegistryError> {
        let compare = vec![self.compare_mod("leader", epoch)];
        let success = vec![self.put("members", ids_value(ids))];
        match self.txn(compare, success).await? {
            Some(_) => Ok(()),
            None => Err(RegistryError::Deposed),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u64)>, RegistryError> {
        let range = RangeRequest {
            key: self.key(name),
            range_end: Vec::new(),
        };
        let reply = self
            .call(|mut kv| {
                let range = range.clone();
                async move { kv.range(range).await }
            })
            .await?;
        Ok(reply.kvs.into_iter().next().map(|kv| {
            // A key's revisions are positive.
            (kv.value, u64::try_from(kv.mod_revision).unwrap_or(0))
        }))
    }

    /// Runs a transaction; returns its revision if it succeeded.
    async fn txn(
        &self,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
    ) -> Result<Option<u64>, RegistryError> {
        let txn = TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let reply = self
            .call(|mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if !reply.succeeded {
            return Ok(None);
        }
        let revision = reply.header.map_or(0, |h| h.revision);
        u64::try_from(revision)
            .ok()
            .filter(|r| *r > 0)
            .map(Some)
            .ok_or_else(|| malformed("transaction header", &"no revision"))
    }

    fn put(&self, name: &str, value: Vec<u8>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: self.key(name),
                value,
            })),
        }
    }

    /// Compares key `name`'s modification revision with `revision` (0: the key does not exist).
    fn compare_mod(&self, name: &str, revision: u64) -> Compare {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        self.compare(
            name,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(revision),
        )
    }

    /// Compares key `name`'s creation revision with `revision` (0: the key does not exist).
    fn compare_create(&self, name: &str, revision: u64) -> Compare {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        self.compare(
            name,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(revision),
        )
    }

    /// An equality compare of key `name`.
    fn compare(
        &self,
        name: &str,
        target: compare::CompareTarget,
        value: compare::TargetUnion,
    ) -> Compare {
        Compare {
            result: compare::CompareResult::Equal as i32,
            target: target as i32,
            key: self.key(name),
            target_union: Some(value),
        }
    }
}

/// The reply to one request, or why there is none within [`REQUEST_TIMEOUT`].
async fn within<T>(
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RegistryError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(refusal(&status)),
        Err(_) => Err(RegistryError::Unavailable(format!(
            "no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

/// What a refused request means: a matter of access (credentials, permissions), or etcd not
/// answering as it should.
fn refusal(status: &tonic::Status) -> RegistryError {
    let message = status.message();
    let denied = matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ) || message.contains("user name is empty")
        || message.contains("authentication failed")
        || message.contains("permission denied");
    if denied {
        RegistryError::Denied(if message.contains("user name is empty") {
            format!(
                "{message}: etcd has auth enabled; give --etcd-user and ${}",
                super::access::PASSWORD_ENV
            )
        } else {
            message.to_string()
        })
    } else {
        // A transport error says little by itself; its causes say what failed (a refused
        // connection, a TLS handshake).
        let mut why = message.to_string();
        let mut cause = std::error::Error::source(status);
        while let Some(e) = cause {
            why = format!("{why}: {e}");
            cause = e.source();
        }
        RegistryError::Unavailable(why)
    }
}

/// etcd forgot the token (it expires when unused, and on a restart): sign in again.
fn stale_token(why: &str) -> bool {
    why.contains("invalid auth token")
}

fn unavailable(e: &impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

fn malformed(key: &str, why: &impl std::fmt::Display) -> RegistryError {
    RegistryError::Malformed {
        key: key.to_string(),
        why: why.to_string(),
    }
}

/// A node id as etcd holds it: its decimal digits.
fn parse_id(value: &[u8]) -> Option<NodeId> {
    std::str::from_utf8(value)
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(NodeId)
}

/// Member ids as etcd holds them: decimal, comma-separated, in succession order.
fn ids_value(ids: &[NodeId]) -> Vec<u8> {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

fn parse_ids(value: &[u8]) -> Option<Vec<NodeId>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|id| parse_id(id.as_bytes())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_read_back_and_garbage_is_refused() {
        let ids = [NodeId(3), NodeId(1), NodeId(2)];
        assert_eq!(parse_ids(&ids_value(&ids)), Some(ids.to_vec()));
        assert_eq!(parse_ids(b""), Some(Vec::new()));
        for bad in [&b"1,,2"[..], b"x", b"1,70000", b"\xff"] {
            assert_eq!(parse_ids(bad), None, "{bad:?}");
        }
        assert_eq!(parse_id(b"42"), Some(NodeId(42)));
        assert_eq!(parse_id(b"-1"), None);
    }
}
