//! One request on a client session stream: `auction::pb::SessionRequest` as the leader decodes
//! it, validated by `auction::server::session_request`, then decided against a valid state.
#![no_main]

use auction::pb::SessionRequest;
use auction_fuzz::check_client_op;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = SessionRequest::decode(data) {
        check_client_op(request.op);
    }
});
