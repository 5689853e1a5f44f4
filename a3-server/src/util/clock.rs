//! Wall-clock time as the catalog and the logs store it: Unix seconds or milliseconds.

/// Unix seconds now.
pub fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

/// Unix milliseconds now (0 for a clock before 1970).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix seconds, as names and listings show times.
pub fn utc_minute(secs: i64) -> String {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_civil_utc() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(1_795_564_800 + 3_660), "2026-11-25 01:01");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00");
    }
}
