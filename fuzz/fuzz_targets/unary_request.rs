//! The unary calls of the client port. The first byte picks the call, the rest is its request
//! message. `Bid`, `Start` and `Close` are validated by the same functions as the unary
//! handlers (reached through `auction::server::session_request`, which wraps nothing else);
//! `Result` and `Status` carry no fields and are only decoded.
#![no_main]

use auction::pb::{
    BidRequest, CloseRequest, ResultRequest, StartRequest, StatusRequest, session_request::Op,
};
use auction_fuzz::check_client_op;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&call, body)) = data.split_first() else {
        return;
    };
    let op = match call % 5 {
        0 => BidRequest::decode(body).map(Op::Bid),
        1 => StartRequest::decode(body).map(Op::Start),
        2 => CloseRequest::decode(body).map(Op::Close),
        3 => ResultRequest::decode(body).map(Op::Result),
        _ => {
            let _ = StatusRequest::decode(body);
            return;
        }
    };
    if let Ok(op) = op {
        check_client_op(Some(op));
    }
});
