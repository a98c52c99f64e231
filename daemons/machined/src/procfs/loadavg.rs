//! /proc/loadavg → the 1, 5 and 15 minute load averages.

/// Parses the first three fields of /proc/loadavg (`0.52 0.58 0.59 1/467 12345`).
pub(super) fn parse(text: &str) -> Result<(f64, f64, f64), String> {
    let mut fields = text.split_whitespace();
    let mut next = |what: &str| -> Result<f64, String> {
        let field = fields
            .next()
            .ok_or_else(|| format!("{what}: missing field"))?;
        field
            .parse()
            .map_err(|_| format!("{what}: {field:?} is not a number"))
    };
    Ok((next("load1")?, next("load5")?, next("load15")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_averages_are_read() {
        assert_eq!(
            parse("0.52 0.58 1.59 1/467 12345\n").expect("parses"),
            (0.52, 0.58, 1.59)
        );
    }

    #[test]
    fn short_or_garbled_text_is_an_error() {
        assert!(parse("0.52 0.58").is_err());
        assert!(parse("0.52 x 0.59 1/2 3").is_err());
    }
}
