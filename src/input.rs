//! What a person types into the client: a line that is an integer bids, any other line asks
//! for the result (as in the original hand-in), besides a few command words (`status`, `start [SECS]`,
//! `close`, `help`, `quit`). A line that looks like a number but is not a valid amount is an
//! error, so `-5`, `0`, `1.5` and `99999999999999999999` never reach the server; so is a line
//! that is not UTF-8 text, or one too long to be anything typed.

use std::io::{self, BufRead, Read as _};

use thiserror::Error;

use crate::types::{Amount, AuctionLength, InputError};

/// The longest line read; a longer one is skipped whole.
pub const MAX_LINE: usize = 4096;

/// One line of the interactive client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Bid(Amount),
    Result,
    Status,
    /// `start [SECS]`, as in a node's terminal: `None` uses the leader's `--duration`.
    Start(Option<AuctionLength>),
    Close,
    Help,
    Quit,
}

/// Why a line is not sent.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LineError {
    #[error("the line is not UTF-8 text (byte {byte:#04x} at position {position})")]
    NotUtf8 { position: usize, byte: u8 },
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("start SECS: SECS must be a whole number of seconds, got {0:?}")]
    Secs(String),
    #[error("too many words for {0:?}; type help")]
    TooManyWords(String),
}

/// What [`read_line`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line, in the buffer (with its newline, if it had one).
    Line,
    /// A line longer than [`MAX_LINE`] bytes, skipped up to and including its newline.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads one line of bytes into `line`, at most [`MAX_LINE`] of them: the bytes are checked
/// by [`parse_bytes`], so input that is not UTF-8 is one bad line, not the end of the input.
///
/// # Errors
/// Reading failed.
pub fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<LineRead> {
    line.clear();
    let limit = MAX_LINE as u64 + 1;
    if input.by_ref().take(limit).read_until(b'\n', line)? == 0 {
        return Ok(LineRead::End);
    }
    if line.len() <= MAX_LINE || line.ends_with(b"\n") {
        return Ok(LineRead::Line);
    }
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(LineRead::TooLong);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(LineRead::TooLong);
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
}

/// Reads one line given as bytes.
///
/// # Errors
/// The bytes are not UTF-8, or as [`parse_line`].
pub fn parse_bytes(line: &[u8]) -> Result<Line, LineError> {
    match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(e) => Err(LineError::NotUtf8 {
            position: e.valid_up_to() + 1,
            byte: line[e.valid_up_to()],
        }),
    }
}

/// Reads one line.
///
/// # Errors
/// The line looks like a number but is not a valid amount, or is a command with a bad or
/// extra word.
pub fn parse_line(line: &str) -> Result<Line, LineError> {
    let t = line.trim();
    let mut words = t.split_whitespace();
    let first = words.next().unwrap_or_default().to_ascii_lowercase();
    let command = match first.as_str() {
        "help" | "?" => Some(Line::Help),
        "quit" | "exit" => Some(Line::Quit),
        "status" => Some(Line::Status),
        "close" => Some(Line::Close),
        "start" => Some(Line::Start(words.next().map(parse_secs).transpose()?)),
        _ => None,
    };
    if let Some(command) = command {
        if words.next().is_some() {
            return Err(LineError::TooManyWords(first));
        }
        return Ok(command);
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(Line::Bid(t.parse::<Amount>()?));
    }
    Ok(Line::Result)
}

/// The SECS of `start SECS`, in the client and in a node's terminal alike.
///
/// # Errors
/// Not a whole number, or not a valid auction length.
pub fn parse_secs(word: &str) -> Result<AuctionLength, LineError> {
    let secs: u64 = word.parse().map_err(|_| LineError::Secs(word.into()))?;
    Ok(AuctionLength::from_secs(secs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_bid_and_other_lines_ask_for_the_result() {
        assert_eq!(parse_line("15\n"), Ok(Line::Bid(Amount::new(15).unwrap())));
        assert_eq!(parse_line(" +3 "), Ok(Line::Bid(Amount::new(3).unwrap())));
        assert_eq!(parse_line("result"), Ok(Line::Result));
        assert_eq!(parse_line(""), Ok(Line::Result));
        assert_eq!(parse_line("what is the result?"), Ok(Line::Result));
        assert_eq!(parse_line("QUIT"), Ok(Line::Quit));
        assert_eq!(parse_line("help"), Ok(Line::Help));
    }

    #[test]
    fn commands_read_as_in_a_nodes_terminal() {
        assert_eq!(parse_line("status"), Ok(Line::Status));
        assert_eq!(parse_line("close\n"), Ok(Line::Close));
        assert_eq!(parse_line("start"), Ok(Line::Start(None)));
        assert_eq!(
            parse_line("start 60"),
            Ok(Line::Start(Some(AuctionLength::from_secs(60).unwrap())))
        );
        assert!(matches!(parse_line("start soon"), Err(LineError::Secs(_))));
        assert_eq!(
            parse_line("start 0"),
            Err(LineError::Input(InputError::Duration))
        );
        assert!(matches!(
            parse_line("close now"),
            Err(LineError::TooManyWords(_))
        ));
    }

    #[test]
    fn numbers_that_are_not_amounts_are_errors() {
        let input = |line| match parse_line(line) {
            Err(LineError::Input(e)) => e,
            other => panic!("{line}: {other:?}"),
        };
        assert!(matches!(input("0"), InputError::AmountNotPositive(_)));
        assert!(matches!(input("-5"), InputError::AmountNotPositive(_)));
        assert!(matches!(input("1.5"), InputError::AmountNotInteger(_)));
        assert!(matches!(input("12abc"), InputError::AmountNotInteger(_)));
        assert_eq!(input("99999999999999999999"), InputError::AmountTooLarge);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error_not_the_end() {
        assert_eq!(
            parse_bytes(b"caf\xe9\n"),
            Err(LineError::NotUtf8 {
                position: 4,
                byte: 0xe9
            })
        );
        assert_eq!(
            parse_bytes("7\n".as_bytes()),
            Ok(Line::Bid(Amount::new(7).unwrap()))
        );
        let mut input: &[u8] = b"\xff\n12\n";
        let mut line = Vec::new();
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::Line);
        assert!(parse_bytes(&line).is_err());
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::Line);
        assert_eq!(parse_bytes(&line), Ok(Line::Bid(Amount::new(12).unwrap())));
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::End);
    }

    #[test]
    fn a_line_too_long_is_skipped_whole() {
        let mut text = vec![b'9'; MAX_LINE + 10];
        text.extend_from_slice(b"\n5\n");
        text.extend(vec![b'x'; MAX_LINE]);
        let mut input = io::BufReader::with_capacity(64, &text[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::TooLong);
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::Line);
        assert_eq!(line, b"5\n");
        // Exactly MAX_LINE bytes without a newline, at the end: a line.
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::Line);
        assert_eq!(read_line(&mut input, &mut line).unwrap(), LineRead::End);
    }
}
