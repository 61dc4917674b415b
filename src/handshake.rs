//! The handshake that opens every replica stream: before any state flows, the leader and the
//! replica each prove that they hold the cluster secret, without sending it.
//!
//! 1. The replica sends `Join`: who it is (id, pid, start time) and a fresh random challenge
//!    of [`NONCE_LEN`] bytes ([`Joining`]).
//! 2. The leader checks the Join ([`Joined::read`]) and answers with `Challenge`: who it is,
//!    its own fresh challenge, and its proof, an HMAC-SHA256 keyed with the secret over both
//!    challenges and its identity ([`Joined::challenge`]).
//! 3. The replica checks that proof ([`Joining::answer`]) and only then sends `Prove`, its own
//!    HMAC over both challenges and its identity; the leader checks it ([`Challenged::check`])
//!    before anything of the replica reaches the leader task.
//!
//! Each proof carries its role's label, so a leader's proof never passes for a replica's, and
//! names its prover, so it cannot be passed off for another process. An attacker without the
//! secret can open streams, send Joins and read the leader's Challenge, but it cannot make a
//! proof for a challenge it has not seen answered: a recorded handshake is worth nothing in
//! the next, whose challenges are new. It cannot join the cluster or get the state, and a
//! replica gives it nothing, not even the replica's proof, when it poses as the leader. The
//! proofs are not bound to the connection: something that sat between two nodes could relay a
//! handshake, which is why the leader also checks that a new member's pid holds the very
//! connection (`server`), and why, without `--tls`, the stream itself is not secret.
//!
//! Everything here is without I/O: `server` and `replica` carry the messages.

use std::io;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use tonic::Status;

use crate::auth::ClusterSecret;
use crate::host::fill_random;
use crate::pb::{self, FromLeader, FromReplica, WireError, from_leader, from_replica};
use crate::replication::Member;

/// Bytes of randomness in each side's handshake challenge.
pub const NONCE_LEN: usize = 32;

/// One side's handshake challenge.
pub type Nonce = [u8; NONCE_LEN];

/// A fresh handshake challenge.
///
/// # Errors
/// The OS cannot provide randomness.
pub fn nonce() -> io::Result<Nonce> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n)?;
    Ok(n)
}

/// The leader's answer to a joining replica's challenge. It names the leader, so a proof cannot
/// be passed off for another process.
pub fn leader_proof(
    secret: &ClusterSecret,
    replica_nonce: &[u8],
    leader_nonce: &[u8],
    leader: &Member,
) -> Vec<u8> {
    mac(secret, LEADER, replica_nonce, leader_nonce, leader)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// The replica's answer to the leader's challenge.
pub fn replica_proof(
    secret: &ClusterSecret,
    leader_nonce: &[u8],
    replica_nonce: &[u8],
    replica: &Member,
) -> Vec<u8> {
    mac(secret, REPLICA, leader_nonce, replica_nonce, replica)
        .finalize()
        .into_bytes()
        .to_vec()
}

const LEADER: &[u8] = b"auction/v1 leader";
const REPLICA: &[u8] = b"auction/v1 replica";

/// Whether `proof` is the proof of `who` in `role` over these challenges (in constant time).
fn verifies(
    secret: &ClusterSecret,
    role: &[u8],
    theirs: &[u8],
    ours: &[u8],
    who: &Member,
    proof: &[u8],
) -> bool {
    mac(secret, role, theirs, ours, who)
        .verify_slice(proof)
        .is_ok()
}

/// HMAC over a role label, the verifier's challenge, the prover's challenge and the prover.
/// Every part has a fixed length or a length prefix, so no two inputs read the same.
fn mac(
    secret: &ClusterSecret,
    label: &[u8],
    theirs: &[u8],
    ours: &[u8],
    who: &Member,
) -> Hmac<Sha256> {
    // Invariant: HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.token().expose().as_bytes())
        .expect("HMAC accepts any key length");
    for part in [label, theirs, ours] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.update(&who.id.0.to_be_bytes());
    mac.update(&who.pid.to_be_bytes());
    mac.update(&who.start_time.to_be_bytes());
    mac
}

/// Why the leader refuses a replica's half of the handshake.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JoinError {
    /// The stream did not start with a Join.
    #[error("the first message must be Join")]
    NotJoin,
    /// The Join names no valid node.
    #[error(transparent)]
    Node(#[from] WireError),
    /// The replica's challenge is not [`NONCE_LEN`] bytes.
    #[error("the challenge must be {NONCE_LEN} bytes")]
    ChallengeLength,
    /// The second message is not the replica's proof.
    #[error("expected the replica's proof")]
    NoProof,
    /// The proof is wrong: the replica does not hold the cluster secret.
    #[error("wrong proof: this node does not hold the cluster secret")]
    WrongProof,
}

impl From<JoinError> for Status {
    /// A malformed Join is `INVALID_ARGUMENT`; a missing or wrong proof `UNAUTHENTICATED`.
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::Node(wire) => wire.into(),
            JoinError::NotJoin | JoinError::ChallengeLength => {
                Status::invalid_argument(e.to_string())
            }
            JoinError::NoProof | JoinError::WrongProof => Status::unauthenticated(e.to_string()),
        }
    }
}

/// Why a replica refuses the leader's half of the handshake: the node on the replica port is
/// not this cluster's leader.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ChallengeError {
    /// The leader's first message is not a Challenge.
    #[error("its first message is not a challenge")]
    NotChallenge,
    /// The Challenge names no leader.
    #[error("the challenge names no leader")]
    NoLeader,
    /// The Challenge names a node that cannot be one.
    #[error("the challenge names no valid leader")]
    InvalidLeader,
    /// The leader's challenge is not [`NONCE_LEN`] bytes.
    #[error("its challenge is not {NONCE_LEN} bytes")]
    ChallengeLength,
    /// The proof is wrong: the node does not hold the cluster secret.
    #[error("wrong proof: it does not hold the cluster secret")]
    WrongProof,
}

/// The replica's half: its Join, then, once the leader has proven itself, its proof.
#[derive(Clone, Debug)]
pub struct Joining {
    me: Member,
    nonce: Nonce,
}

impl Joining {
    /// The handshake of replica `me`, with a fresh challenge.
    ///
    /// # Errors
    /// The OS cannot provide randomness.
    pub fn new(me: Member) -> io::Result<Self> {
        Ok(Self::with_nonce(me, nonce()?))
    }

    /// The handshake of replica `me` with the challenge `nonce`, which must be fresh for a
    /// real stream (fixed ones serve tests and fuzzing).
    pub fn with_nonce(me: Member, nonce: Nonce) -> Self {
        Self { me, nonce }
    }

    /// The stream's first message: who this replica is, and its challenge.
    pub fn join(&self) -> FromReplica {
        FromReplica {
            msg: Some(from_replica::Msg::Join(pb::Join {
                node: Some(self.me.into()),
                nonce: self.nonce.to_vec(),
            })),
        }
    }

    /// Checks the leader's first message, its proof over this replica's challenge, and only if
    /// it is right answers with this replica's proof. Returns the proven leader and the Prove to
    /// send.
    ///
    /// # Errors
    /// Why the node on the replica port is not this cluster's leader: its first message is not
    /// a challenge, names no valid node, has a challenge of the wrong length or a wrong proof.
    pub fn answer(
        &self,
        secret: &ClusterSecret,
        first: FromLeader,
    ) -> Result<(Member, FromReplica), ChallengeError> {
        let Some(from_leader::Msg::Challenge(c)) = first.msg else {
            return Err(ChallengeError::NotChallenge);
        };
        let leader = c.leader.ok_or(ChallengeError::NoLeader)?;
        let leader = Member::try_from(leader).map_err(|_| ChallengeError::InvalidLeader)?;
        if c.nonce.len() != NONCE_LEN {
            return Err(ChallengeError::ChallengeLength);
        }
        if !verifies(secret, LEADER, &self.nonce, &c.nonce, &leader, &c.proof) {
            return Err(ChallengeError::WrongProof);
        }
        let proof = replica_proof(secret, &c.nonce, &self.nonce, &self.me);
        let prove = FromReplica {
            msg: Some(from_replica::Msg::Prove(pb::Prove { proof })),
        };
        Ok((leader, prove))
    }
}

/// The leader's half, once a replica's Join has been read: who the replica says it is, and its
/// challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    replica: Member,
    nonce: Vec<u8>,
}

impl Joined {
    /// Reads the first message of a replica's stream: a Join that names a valid node and
    /// carries a challenge of [`NONCE_LEN`] bytes.
    ///
    /// # Errors
    /// [`JoinError::NotJoin`], [`JoinError::Node`] or [`JoinError::ChallengeLength`] when the
    /// message is anything else.
    pub fn read(first: Option<FromReplica>) -> Result<Self, JoinError> {
        let Some(FromReplica {
            msg: Some(from_replica::Msg::Join(join)),
        }) = first
        else {
            return Err(JoinError::NotJoin);
        };
        let replica = Member::try_from(join.node.ok_or(WireError::Missing("node"))?)?;
        if join.nonce.len() != NONCE_LEN {
            return Err(JoinError::ChallengeLength);
        }
        Ok(Self {
            replica,
            nonce: join.nonce,
        })
    }

    /// The node the Join names, not yet proven.
    pub fn replica(&self) -> Member {
        self.replica
    }

    /// The replica's challenge.
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// The leader's answer, with its own challenge `nonce` (fresh for a real stream): the
    /// Challenge to send, which proves that `leader` holds `secret`, and what checks the
    /// replica's proof.
    pub fn challenge(
        self,
        secret: &ClusterSecret,
        leader: Member,
        nonce: Nonce,
    ) -> (Challenged, FromLeader) {
        let challenge = pb::Challenge {
            leader: Some(leader.into()),
            nonce: nonce.to_vec(),
            proof: leader_proof(secret, &self.nonce, &nonce, &leader),
        };
        let message = FromLeader {
            seq: 0,
            msg: Some(from_leader::Msg::Challenge(challenge)),
        };
        let challenged = Challenged {
            replica: self.replica,
            theirs: self.nonce,
            ours: nonce,
        };
        (challenged, message)
    }
}

/// The leader's half after its Challenge: it waits for the replica's proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenged {
    replica: Member,
    theirs: Vec<u8>,
    ours: Nonce,
}

impl Challenged {
    /// The node the Join named, not yet proven.
    pub fn replica(&self) -> Member {
        self.replica
    }

    /// Checks the replica's second message: its proof, over both challenges, that it holds
    /// `secret`. Returns the node, now proven to hold the secret.
    ///
    /// # Errors
    /// [`JoinError::NoProof`] when the message is not a Prove, [`JoinError::WrongProof`] when
    /// its proof is wrong.
    pub fn check(
        &self,
        secret: &ClusterSecret,
        proof: Option<FromReplica>,
    ) -> Result<Member, JoinError> {
        let Some(FromReplica {
            msg: Some(from_replica::Msg::Prove(prove)),
        }) = proof
        else {
            return Err(JoinError::NoProof);
        };
        if !verifies(
            secret,
            REPLICA,
            &self.ours,
            &self.theirs,
            &self.replica,
            &prove.proof,
        ) {
            return Err(JoinError::WrongProof);
        }
        Ok(self.replica)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::types::{NodeId, Token};

    fn member(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 4000 + u32::from(id),
            start_time: 99,
        }
    }

    fn secret(c: char) -> ClusterSecret {
        ClusterSecret::new(Token::new(c.to_string().repeat(40)).unwrap())
    }

    const LEADER_ID: u16 = 5400;
    const REPLICA_ID: u16 = 5401;

    /// Runs the whole handshake between a replica holding `replica_secret` and a leader holding
    /// `leader_secret`, with the given challenges. Returns what each side concluded: the
    /// replica's about the leader, and, if the replica answered, the leader's about it.
    fn run(
        replica_secret: &ClusterSecret,
        leader_secret: &ClusterSecret,
        nonces: (Nonce, Nonce),
    ) -> (
        Result<Member, ChallengeError>,
        Option<Result<Member, JoinError>>,
    ) {
        let (replica_nonce, leader_nonce) = nonces;
        let replica = Joining::with_nonce(member(REPLICA_ID), replica_nonce);
        let joined = Joined::read(Some(replica.join())).expect("a valid Join");
        let (challenged, challenge) =
            joined.challenge(leader_secret, member(LEADER_ID), leader_nonce);
        match replica.answer(replica_secret, challenge) {
            Ok((leader, prove)) => (
                Ok(leader),
                Some(challenged.check(leader_secret, Some(prove))),
            ),
            Err(e) => (Err(e), None),
        }
    }

    #[test]
    fn the_two_halves_with_the_same_secret_prove_each_other() {
        let s = secret('a');
        let (leader, replica) = run(&s, &s, ([1; NONCE_LEN], [2; NONCE_LEN]));
        assert_eq!(leader, Ok(member(LEADER_ID)));
        assert_eq!(replica, Some(Ok(member(REPLICA_ID))));
        // With fresh challenges too.
        let (leader, replica) = run(&s, &s, (nonce().unwrap(), nonce().unwrap()));
        assert_eq!(leader, Ok(member(LEADER_ID)));
        assert_eq!(replica, Some(Ok(member(REPLICA_ID))));
    }

    #[test]
    fn a_replica_gives_no_proof_to_a_leader_with_another_secret() {
        let (leader, replica) = run(&secret('a'), &secret('b'), ([1; NONCE_LEN], [2; NONCE_LEN]));
        assert_eq!(leader, Err(ChallengeError::WrongProof));
        assert_eq!(replica, None, "the replica answered an impostor");
    }

    #[test]
    fn a_leader_refuses_a_replica_with_another_secret() {
        let (a, b) = (secret('a'), secret('b'));
        let (replica_nonce, leader_nonce) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let joined = Joined::read(Some(
            Joining::with_nonce(member(REPLICA_ID), replica_nonce).join(),
        ))
        .unwrap();
        let (challenged, _) = joined.challenge(&a, member(LEADER_ID), leader_nonce);
        // Whatever challenge the replica saw, a proof made with another secret is wrong.
        let proof = replica_proof(&b, &leader_nonce, &replica_nonce, &member(REPLICA_ID));
        let prove = Some(FromReplica {
            msg: Some(from_replica::Msg::Prove(pb::Prove { proof })),
        });
        let refused = challenged.check(&a, prove).unwrap_err();
        assert_eq!(refused, JoinError::WrongProof);
        let status = Status::from(refused);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("cluster secret"), "{status:?}");
    }

    /// A recorded handshake is worth nothing in the next one: each side's new challenge makes
    /// the old proofs wrong, in both directions.
    #[test]
    fn a_replayed_proof_is_refused() {
        let s = secret('a');
        let first = Joining::with_nonce(member(REPLICA_ID), [1; NONCE_LEN]);
        let (challenged, challenge) = Joined::read(Some(first.join())).unwrap().challenge(
            &s,
            member(LEADER_ID),
            [2; NONCE_LEN],
        );
        let (_, recorded_prove) = first.answer(&s, challenge.clone()).unwrap();
        assert!(challenged.check(&s, Some(recorded_prove.clone())).is_ok());
        // The same Join again, but the leader draws a new challenge: the old proof fails.
        let (again, _) = Joined::read(Some(first.join())).unwrap().challenge(
            &s,
            member(LEADER_ID),
            [3; NONCE_LEN],
        );
        assert_eq!(
            again.check(&s, Some(recorded_prove)),
            Err(JoinError::WrongProof)
        );
        // A recorded Challenge shown to a replica with a new challenge: refused, unanswered.
        let next = Joining::with_nonce(member(REPLICA_ID), [4; NONCE_LEN]);
        assert_eq!(
            next.answer(&s, challenge).unwrap_err(),
            ChallengeError::WrongProof
        );
    }

    /// A proof names its role and its prover: a leader's proof is no replica's, a proof for one
    /// node is not another's, and a Challenge that names another leader fails.
    #[test]
    fn a_proof_is_bound_to_its_role_and_its_prover() {
        let s = secret('a');
        let (rn, ln) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let prove = |proof| {
            Some(FromReplica {
                msg: Some(from_replica::Msg::Prove(pb::Prove { proof })),
            })
        };
        let (challenged, challenge) =
            Joined::read(Some(Joining::with_nonce(member(REPLICA_ID), rn).join()))
                .unwrap()
                .challenge(&s, member(LEADER_ID), ln);
        // The leader's proof over the same values, reflected back at it.
        let reflected = leader_proof(&s, &ln, &rn, &member(REPLICA_ID));
        let other = replica_proof(&s, &ln, &rn, &member(REPLICA_ID + 1));
        let truncated = replica_proof(&s, &ln, &rn, &member(REPLICA_ID))[1..].to_vec();
        for wrong in [reflected, other, truncated] {
            assert_eq!(
                challenged.check(&s, prove(wrong)),
                Err(JoinError::WrongProof)
            );
        }
        // The right proof, but the Challenge names another leader than the one it proves.
        let Some(from_leader::Msg::Challenge(mut c)) = challenge.msg else {
            panic!("a challenge");
        };
        c.leader = Some(member(LEADER_ID + 1).into());
        let posing = FromLeader {
            seq: 0,
            msg: Some(from_leader::Msg::Challenge(c)),
        };
        let replica = Joining::with_nonce(member(REPLICA_ID), rn);
        assert_eq!(
            replica.answer(&s, posing).unwrap_err(),
            ChallengeError::WrongProof
        );
    }

    fn join(id: u32, nonce_len: usize) -> Option<FromReplica> {
        Some(FromReplica {
            msg: Some(from_replica::Msg::Join(pb::Join {
                node: Some(pb::NodeIdentity {
                    id,
                    pid: 42,
                    start_time: 7,
                }),
                nonce: vec![3; nonce_len],
            })),
        })
    }

    #[test]
    fn the_leader_takes_only_a_valid_join() {
        let joined = Joined::read(join(5401, NONCE_LEN)).unwrap();
        let node = joined.replica();
        assert_eq!((node.id, node.pid, node.start_time), (NodeId(5401), 42, 7));
        assert_eq!(joined.nonce(), &[3; NONCE_LEN][..]);
        let no_node = Some(FromReplica {
            msg: Some(from_replica::Msg::Join(pb::Join {
                node: None,
                nonce: vec![3; NONCE_LEN],
            })),
        });
        for (refused, why) in [
            (
                join(70_000, NONCE_LEN),
                JoinError::Node(WireError::NodeId(70_000)),
            ),
            (no_node, JoinError::Node(WireError::Missing("node"))),
            (join(5401, NONCE_LEN - 1), JoinError::ChallengeLength),
            (None, JoinError::NotJoin),
            (
                Some(FromReplica {
                    msg: Some(from_replica::Msg::Prove(pb::Prove::default())),
                }),
                JoinError::NotJoin,
            ),
        ] {
            let e = Joined::read(refused).unwrap_err();
            assert_eq!(e, why);
            assert_eq!(Status::from(e).code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn the_leader_takes_only_a_prove_after_its_challenge() {
        let s = secret('a');
        let (challenged, _) = Joined::read(join(5401, NONCE_LEN)).unwrap().challenge(
            &s,
            member(LEADER_ID),
            [2; NONCE_LEN],
        );
        for not_a_proof in [None, join(5401, NONCE_LEN), Some(FromReplica { msg: None })] {
            let e = challenged.check(&s, not_a_proof).unwrap_err();
            assert_eq!(e, JoinError::NoProof);
            assert_eq!(Status::from(e).code(), Code::Unauthenticated);
        }
    }

    #[test]
    fn the_replica_takes_only_a_well_formed_challenge() {
        let s = secret('a');
        let rn = [1; NONCE_LEN];
        let replica = Joining::with_nonce(member(REPLICA_ID), rn);
        let challenge = |leader: Option<pb::NodeIdentity>, nonce: &[u8]| FromLeader {
            seq: 0,
            msg: Some(from_leader::Msg::Challenge(pb::Challenge {
                leader,
                nonce: nonce.to_vec(),
                proof: leader_proof(&s, &rn, nonce, &member(LEADER_ID)),
            })),
        };
        let leader = Some(member(LEADER_ID).into());
        let (proven, prove) = replica
            .answer(&s, challenge(leader, &[2; NONCE_LEN]))
            .unwrap();
        assert_eq!(proven, member(LEADER_ID));
        let right = replica_proof(&s, &[2; NONCE_LEN], &rn, &member(REPLICA_ID));
        assert_eq!(
            prove.msg,
            Some(from_replica::Msg::Prove(pb::Prove { proof: right }))
        );
        let invalid = Some(pb::NodeIdentity {
            id: 70_000,
            pid: 1,
            start_time: 1,
        });
        let heartbeat = FromLeader {
            seq: 0,
            msg: Some(from_leader::Msg::Heartbeat(pb::Heartbeat { clock_ms: 0 })),
        };
        for (refused, why) in [
            (challenge(None, &[2; NONCE_LEN]), ChallengeError::NoLeader),
            (
                challenge(invalid, &[2; NONCE_LEN]),
                ChallengeError::InvalidLeader,
            ),
            // Refused for its length alone: the proof over the short challenge is right.
            (
                challenge(leader, &[2; NONCE_LEN - 1]),
                ChallengeError::ChallengeLength,
            ),
            (heartbeat, ChallengeError::NotChallenge),
            (
                FromLeader { seq: 0, msg: None },
                ChallengeError::NotChallenge,
            ),
        ] {
            assert_eq!(replica.answer(&s, refused).unwrap_err(), why);
        }
    }
}
