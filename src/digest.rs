//! The digest of a replicated state: one number that members compare to see that they hold the
//! same state.

use prost::Message;

use crate::pb;
use crate::replication::ClusterState;

/// A hash of the whole replicated state: FNV-1a (64 bits) of its wire encoding, which is
/// deterministic because every collection in the state is ordered. Equal states have equal
/// digests. It costs a pass over the whole state, so only a node's own terminal asks for it.
pub fn of(state: &ClusterState) -> u64 {
    pb::State::from(state)
        .encode_to_vec()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{Change, ChangeKind, Generation, Member};
    use crate::types::{Millis, NodeId};

    #[test]
    fn equal_states_have_equal_digests_and_a_change_changes_it() {
        let me = Member {
            id: NodeId(5400),
            pid: 42,
            start_time: 9,
        };
        let a = ClusterState::founded(me, Generation(5));
        let mut b = a.clone();
        assert_eq!(of(&a), of(&b));
        b.apply(&Change {
            at: Millis(1),
            kind: ChangeKind::Tick,
        });
        assert_ne!(of(&a), of(&b));
    }
}
