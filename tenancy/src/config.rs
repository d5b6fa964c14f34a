//! Small parsers every binary's configuration shares.

use std::time::Duration;

/// `250ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m, 30d)"))?;
    let times = |secs: u64| {
        n.checked_mul(secs)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{s}` is too long a duration"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => times(60),
        "h" => times(3600),
        "d" => times(86_400),
        _ => Err(format!(
            "`{s}` is not a duration (e.g. 500ms, 30s, 5m, 30d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_others() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }
}
