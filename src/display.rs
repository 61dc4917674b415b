//! What a reader sees, in words for people: one line for an auction, one for the cluster. The
//! client, the demo and the node's terminal all show them the same way.

use crate::view::{Status, View};

/// The auction in one line: open with its highest bid and the seconds left (rounded up), or
/// closed with its winner.
pub fn describe_auction(a: &View) -> String {
    if a.number == 0 {
        return "no auction has been started".into();
    }
    let leader = a.highest.as_ref().map(|h| (h.bidder.as_str(), h.amount));
    if a.open {
        let left = a.left_ms().div_ceil(1000);
        match leader {
            Some((who, amount)) => format!(
                "auction {} is open: highest bid {amount} by {who}; closes in {left} s",
                a.number
            ),
            None => format!(
                "auction {} is open: no bids yet; closes in {left} s",
                a.number
            ),
        }
    } else {
        match leader {
            Some((who, amount)) => {
                format!("auction {} is closed: {who} won with {amount}", a.number)
            }
            None => format!("auction {} is closed without bids", a.number),
        }
    }
}

/// The cluster in one line: who leads, who is next in line, epoch and version, the state digest
/// when the status has one, and the auction.
pub fn describe_status(s: &Status) -> String {
    let queue: Vec<String> = s.next_in_line().map(|m| m.id.to_string()).collect();
    let digest = s
        .digest
        .map(|d| format!(", digest {d:016x}"))
        .unwrap_or_default();
    let layout = describe_layout(s)
        .map(|l| format!("; {l}"))
        .unwrap_or_default();
    let answered = match s.answered_by {
        Some(m) if !s.from_leader() => format!(
            "; answered by node {}, which does not lead, from the state it holds",
            m.id
        ),
        _ => String::new(),
    };
    format!(
        "leader {}, next in line [{}], epoch {}, version {}{digest}; {}{layout}{answered}",
        s.leader.id,
        queue.join(", "),
        s.epoch,
        s.version,
        describe_auction(&s.auction),
    )
}

/// Where the cluster serves clients, in words: the mode, the leader's client address and the
/// members' in succession order (`?` where not known); `None` when the status does not say.
pub fn describe_layout(s: &Status) -> Option<String> {
    let mode = s.mode?;
    let at = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_string(), |a| a.to_string());
    let members: Vec<String> = s
        .members_with_addrs()
        .map(|(m, a)| format!("{} at {}", m.id, at(a)))
        .collect();
    Some(format!(
        "{}: leader {} at {}, members in succession order [{}]",
        mode.name(),
        s.leader.id,
        at(s.leader_addr),
        members.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auction::Bid;
    use crate::replication::Member;
    use crate::types::{Amount, BidderId, NodeId};
    use crate::view::Mode;

    fn open_auction() -> View {
        View {
            number: 2,
            open: true,
            deadline_ms: 10_500,
            highest: None,
            bidders: 0,
            now_ms: 1_000,
        }
    }

    #[test]
    fn auctions_read_well() {
        let mut a = open_auction();
        assert_eq!(
            describe_auction(&a),
            "auction 2 is open: no bids yet; closes in 10 s"
        );
        a.highest = Some(Bid {
            bidder: BidderId::new("ann").unwrap(),
            amount: Amount::new(7).unwrap(),
        });
        assert_eq!(
            describe_auction(&a),
            "auction 2 is open: highest bid 7 by ann; closes in 10 s"
        );
        a.open = false;
        assert_eq!(describe_auction(&a), "auction 2 is closed: ann won with 7");
        a.number = 0;
        assert_eq!(describe_auction(&a), "no auction has been started");
    }

    #[test]
    fn a_status_names_the_leader_then_the_line_of_succession() {
        let node = |id| Member {
            id: NodeId(id),
            pid: 1,
            start_time: 1,
        };
        let mut s = Status {
            leader: node(5401),
            members: vec![node(5401), node(5402), node(5400)],
            epoch: 3,
            version: 17,
            auction: open_auction(),
            digest: None,
            mode: None,
            leader_addr: None,
            member_addrs: Vec::new(),
            answered_by: None,
        };
        assert_eq!(
            describe_status(&s),
            "leader 5401, next in line [5402, 5400], epoch 3, version 17; \
             auction 2 is open: no bids yet; closes in 10 s"
        );
        s.digest = Some(0xabc);
        assert!(describe_status(&s).contains("version 17, digest 0000000000000abc; auction 2"));
        let addr = |last: u8| Some(std::net::SocketAddr::from(([127, 0, 0, last], 5000)));
        s.mode = Some(Mode::MultiHost);
        s.leader_addr = addr(2);
        s.member_addrs = vec![addr(2), None, addr(1)];
        s.answered_by = Some(node(5402));
        s.digest = None;
        assert_eq!(
            describe_status(&s),
            "leader 5401, next in line [5402, 5400], epoch 3, version 17; \
             auction 2 is open: no bids yet; closes in 10 s; \
             multi-host: leader 5401 at 127.0.0.2:5000, members in succession order \
             [5401 at 127.0.0.2:5000, 5402 at ?, 5400 at 127.0.0.1:5000]; \
             answered by node 5402, which does not lead, from the state it holds"
        );
        s.answered_by = Some(s.leader);
        assert!(describe_status(&s).ends_with("5400 at 127.0.0.1:5000]"));
    }
}
