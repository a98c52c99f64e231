//! Go-style durations (`8760h`, `24h`, `1h30m`, `90s`), as talosctl's `--crt-ttl` takes them,
//! plus `d` for days because certificate lifetimes are usually counted in days.

use std::time::Duration;

/// The longest duration any flag takes: 100 years. Longer is a typo, and could not be added to
/// the current time (a deadline, a certificate's end) without overflowing.
const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses a duration such as `8760h`, `1h30m` or `30d`. Zero is refused: a certificate that is
/// valid for no time is always a mistake. So is one longer than [`MAX`].
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let duration = parse_or_zero(text)?;
    if duration.is_zero() {
        return Err(format!(
            "invalid duration {:?}: must be positive",
            text.trim()
        ));
    }
    Ok(duration)
}

/// [`parse`] for the flags where zero means "not at all" (`rotate-token --keep-old-for 0s`).
pub(crate) fn parse_or_zero(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; use e.g. 24h, 30d or 1h30m".to_owned());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: {number} is too large"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds_per_unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (s, m, h or d)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use s, m, h or d)"
                ));
            }
        };
        total = number
            .checked_mul(seconds_per_unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = tail;
    }
    let duration = Duration::from_secs(total);
    if duration > MAX {
        return Err(format!(
            "invalid duration {text:?}: at most 36500d (100 years)"
        ));
    }
    Ok(duration)
}

/// Renders a duration the way a person reads a certificate lifetime: `364d 23h`, `5h 2m`.
pub(crate) fn human(duration: time::Duration) -> String {
    let secs = duration.whole_seconds().unsigned_abs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {}s", secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse() {
        assert_eq!(parse("8760h").unwrap(), Duration::from_secs(8760 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("24").unwrap_err().contains("missing unit"));
        assert!(parse("3y").unwrap_err().contains("unknown unit"));
        assert!(parse("h").unwrap_err().contains("expected a number"));
        assert!(parse("0h").unwrap_err().contains("positive"));
        assert!(
            parse("99999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse("36500d").unwrap(), MAX);
        assert_eq!(parse_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_or_zero("0h0m").unwrap(), Duration::ZERO);
        assert!(parse_or_zero("").unwrap_err().contains("empty"));
        assert!(
            parse_or_zero("36501d")
                .unwrap_err()
                .contains("at most 36500d")
        );
        for long in ["36501d", "18446744073709551615s", "3000000d"] {
            assert!(
                parse(long).unwrap_err().contains("at most 36500d"),
                "{long}"
            );
        }
    }

    #[test]
    fn human_durations_read_naturally() {
        assert_eq!(human(time::Duration::hours(24 * 365 - 1)), "364d 23h");
        assert_eq!(human(time::Duration::minutes(302)), "5h 2m");
        assert_eq!(human(time::Duration::seconds(61)), "1m 1s");
    }
}
