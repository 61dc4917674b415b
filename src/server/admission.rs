//! What the client port admits: a request from the wire, validated, becomes one the leader
//! decides. Bids carry their bidder's token (the session remembers the last one, see
//! [`Credentials`]); start and close carry the operator token.

use tonic::Status;

use crate::auction::Op;
use crate::leader::Request;
use crate::pb::{self, BidRequest, CloseRequest, StartRequest, WireError};
use crate::types::{Amount, AuctionLength, BidderId, Credential, InputError, Token};

/// What the client port needs to turn a request from the wire into one the leader decides.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The credential of the operator token, which start and close must carry. Comparing
    /// digests rather than tokens keeps the comparison's timing from telling anything about the
    /// token.
    pub operator: Credential,
    /// The length of an auction started without one.
    pub default_duration: AuctionLength,
    /// Requests per second one session may send; beyond it they are refused unapplied.
    pub session_rate: u32,
}

/// Validates a bid: the one place a bid from the wire becomes a request. The token becomes the
/// credential that the state machine checks against the name's registration.
pub(super) fn bid(r: BidRequest, credentials: &mut Credentials) -> Result<Request, Status> {
    let id = Some(pb::request_id(r.id)?);
    let bidder = BidderId::new(r.bidder).map_err(WireError::from)?;
    let amount = Amount::new(r.amount).map_err(WireError::from)?;
    let credential = credentials
        .of(r.token)
        .map_err(|e| Status::unauthenticated(format!("bid: {e}")))?;
    let op = Op::Bid {
        bidder,
        amount,
        credential,
    };
    Ok(Request::Change { id, op })
}

/// The last valid token a session's bids carried, with its credential. A session's bids nearly
/// always carry the same token, and checking and hashing it was most of a bid's validation.
#[derive(Debug, Default)]
pub struct Credentials {
    last: Option<(Token, Credential)>,
}

impl Credentials {
    /// The credential of `token`, which must be a valid token.
    ///
    /// # Errors
    /// [`InputError::Token`] when it is not.
    pub fn of(&mut self, token: String) -> Result<Credential, InputError> {
        if let Some((last, credential)) = &self.last
            && last.expose() == token
        {
            return Ok(*credential);
        }
        let token = Token::new(token)?;
        let credential = token.credential();
        self.last = Some((token, credential));
        Ok(credential)
    }
}

/// Checks that an operator's request carries the operator token.
fn operator(token: String, admission: &Admission, what: &str) -> Result<(), Status> {
    let token = Token::new(token)
        .map_err(|_| Status::unauthenticated(format!("{what} needs the operator token")))?;
    if token.credential() == admission.operator {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what}: wrong operator token"
        )))
    }
}

/// Validates a start: the operator token, and the auction's length (or the default).
pub(super) fn start(r: StartRequest, admission: &Admission) -> Result<Request, Status> {
    operator(r.operator_token, admission, "start")?;
    let duration = match r.duration_ms {
        0 => admission.default_duration,
        ms => AuctionLength::from_millis(ms).map_err(WireError::from)?,
    };
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Start { duration },
    })
}

/// Validates a close: the operator token.
pub(super) fn close(r: CloseRequest, admission: &Admission) -> Result<Request, Status> {
    operator(r.operator_token, admission, "close")?;
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Close,
    })
}

/// Validates one request of a client session: what the leader gets to decide, or why not.
/// `credentials` remembers the session's last bid token.
///
/// # Errors
/// `INVALID_ARGUMENT` when a field is missing or out of range; `UNAUTHENTICATED` when a bid has
/// no valid token or start or close no operator token; `PERMISSION_DENIED` when the operator
/// token is wrong.
pub fn session_request(
    op: Option<pb::session_request::Op>,
    admission: &Admission,
    credentials: &mut Credentials,
) -> Result<Request, Status> {
    match op.ok_or(WireError::Missing("op"))? {
        pb::session_request::Op::Bid(r) => bid(r, credentials),
        pb::session_request::Op::Result(_) => Ok(Request::Result),
        pb::session_request::Op::Start(r) => start(r, admission),
        pb::session_request::Op::Close(r) => close(r, admission),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_remembers_only_its_last_valid_token() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let credential = |t: &str| Token::new(t).unwrap().credential();
        let mut credentials = Credentials::default();
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
        assert_eq!(credentials.of(b.clone()), Ok(credential(&b)));
        // An invalid token is refused, and does not displace the valid one.
        for invalid in ["short".to_string(), format!("{b}!"), String::new()] {
            assert!(credentials.of(invalid).is_err());
        }
        assert_eq!(
            credentials.last.as_ref().map(|(_, c)| *c),
            Some(credential(&b))
        );
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
    }
}
