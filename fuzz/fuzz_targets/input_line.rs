//! What a person types into the interactive client (`auction::input::parse_bytes` and
//! `parse_line`), and the `FromStr` parsers of the validated types (`Amount`, `BidderId`,
//! `Token`). Whatever parses as a bid is a valid amount, and is the number that was typed; bytes
//! that are not UTF-8 are an error.
#![no_main]

use auction::input::{Line, parse_bytes, parse_line};
use auction::types::{Amount, AuctionLength, BidderId, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Durations and amounts from numbers: any u64 either builds a value in range or is refused.
    if let Some(n) = data.get(..8) {
        let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
        if let Ok(a) = Amount::new(n) {
            assert_eq!(a.get(), n);
            assert!((1..=Amount::MAX).contains(&n));
        }
        if let Ok(d) = AuctionLength::from_millis(n) {
            assert!((1_000..=AuctionLength::MAX_SECS * 1_000).contains(&d.as_millis()));
        }
        if let Ok(d) = AuctionLength::from_secs(n) {
            assert_eq!(d.as_millis(), n * 1_000);
        }
    }

    // Any bytes: a line that is not UTF-8 is an error, never a panic.
    let from_bytes = parse_bytes(data);
    let Ok(line) = std::str::from_utf8(data) else {
        assert!(from_bytes.is_err());
        return;
    };
    assert_eq!(from_bytes, parse_line(line));
    let t = line.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let looks_like_a_number = unsigned.starts_with(|c: char| c.is_ascii_digit());
    let first = t
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let command = matches!(
        first.as_str(),
        "help" | "?" | "quit" | "exit" | "status" | "start" | "close"
    );
    match parse_line(line) {
        Ok(Line::Bid(a)) => {
            assert!((1..=Amount::MAX).contains(&a.get()), "{line:?} bid {a}");
            let digits = t.strip_prefix('+').unwrap_or(t);
            assert!(
                digits.bytes().all(|b| b.is_ascii_digit()),
                "{line:?} bid {a}"
            );
            assert_eq!(digits.parse::<u64>(), Ok(a.get()), "{line:?} bid {a}");
        }
        Ok(Line::Help) => assert!(matches!(t.to_ascii_lowercase().as_str(), "help" | "?")),
        Ok(Line::Quit) => assert!(matches!(t.to_ascii_lowercase().as_str(), "quit" | "exit")),
        Ok(Line::Status) => assert_eq!(t.to_ascii_lowercase(), "status"),
        Ok(Line::Close) => assert_eq!(t.to_ascii_lowercase(), "close"),
        Ok(Line::Start(d)) => {
            assert_eq!(first, "start", "{line:?}");
            if let Some(d) = d {
                assert!((1_000..=AuctionLength::MAX_SECS * 1_000).contains(&d.as_millis()));
            }
        }
        Ok(Line::Result) => assert!(
            !looks_like_a_number && !command,
            "{line:?} asked for the result"
        ),
        Err(e) => {
            assert!(looks_like_a_number || command, "{line:?} refused: {e}");
            let _ = e.to_string();
        }
    }

    match line.parse::<Amount>() {
        Ok(a) => {
            assert!((1..=Amount::MAX).contains(&a.get()), "{line:?} is {a}");
            assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    match line.parse::<BidderId>() {
        Ok(b) => {
            assert_eq!(b.as_str(), line);
            assert!((1..=BidderId::MAX_LEN).contains(&line.len()), "{line:?}");
            assert!(
                line.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')),
                "{line:?}"
            );
            assert_eq!(b.to_string().parse::<BidderId>(), Ok(b));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    match line.parse::<Token>() {
        Ok(t) => {
            assert_eq!(t.expose(), line.trim());
            assert!((Token::MIN_LEN..=Token::MAX_LEN).contains(&t.expose().len()));
            assert!(
                t.expose()
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_')),
                "{line:?}"
            );
            assert_eq!(
                t.credential(),
                Token::new(line.trim()).expect("valid").credential()
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
