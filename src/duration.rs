//! The duration syntax shared by policies and configuration: `500ms`, `30s`, `1m`, `1h`, `1d`.

use std::time::Duration;

/// Parses `<digits><unit>` where unit is `ms`, `s`, `m`, `h` or `d`.
///
/// Returns a message fit for the user when the text is not of that form.
pub fn parse(text: &str) -> Result<Duration, String> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(unit_at);
    let bad =
        || format!("bad duration `{text}`: write a whole number and a unit, as in `500ms`, `30s`, `1m`, `1h` or `1d`");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = n.checked_mul(millis_per_unit).ok_or_else(bad)?;
    if millis == 0 {
        return Err(format!("bad duration `{text}`: it must be longer than zero"));
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn rejects() {
        for bad in ["", "s", "10", "1.5m", "-1s", "1 m", "1w", "0s", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
