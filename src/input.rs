//! What a person types into the client: a line that is an integer bids, any other line asks
//! for the result (as in the seed). A line that looks like a number but is not a valid amount
//! is an error, so `-5`, `0`, `1.5` and `99999999999999999999` never reach the server.

use crate::types::{Amount, InputError};

/// One line of the interactive client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Bid(Amount),
    Result,
    Help,
    Quit,
}

/// Reads one line.
///
/// # Errors
/// The line looks like a number but is not a valid amount.
pub fn parse_line(line: &str) -> Result<Line, InputError> {
    let t = line.trim();
    match t.to_ascii_lowercase().as_str() {
        "help" | "?" => return Ok(Line::Help),
        "quit" | "exit" => return Ok(Line::Quit),
        _ => {}
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned.starts_with(|c: char| c.is_ascii_digit()) {
        return t.parse::<Amount>().map(Line::Bid);
    }
    Ok(Line::Result)
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
    fn numbers_that_are_not_amounts_are_errors() {
        assert!(matches!(
            parse_line("0"),
            Err(InputError::AmountNotPositive(_))
        ));
        assert!(matches!(
            parse_line("-5"),
            Err(InputError::AmountNotPositive(_))
        ));
        assert!(matches!(
            parse_line("1.5"),
            Err(InputError::AmountNotInteger(_))
        ));
        assert!(matches!(
            parse_line("12abc"),
            Err(InputError::AmountNotInteger(_))
        ));
        assert_eq!(
            parse_line("99999999999999999999"),
            Err(InputError::AmountTooLarge)
        );
    }
}
