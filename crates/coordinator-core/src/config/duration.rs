//! Durations as written in configuration files: `"5s"`, `"250ms"`, `"3m"`, or
//! bare milliseconds (`1000` or `"1000"`).

use std::time::Duration;

/// Parses a configuration duration. Bare numbers are milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration such as \"5s\", \"250ms\" or 1000 (milliseconds), found an empty string".into());
    }
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(Duration::from_millis(millis));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("expected a duration such as \"5s\", \"250ms\" or 1000 (milliseconds), found {text:?} ({error})")
    })
}

/// Writes a duration the way it is read back: `"250ms"`, `"5s"`, `"3m"`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0ms".into();
    }
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// `serde(with = …)` helpers so normalized configurations print durations as text.
pub mod serde_text {
    use super::format_duration;
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }

    pub mod option {
        use super::format_duration;
        use serde::Serializer;
        use std::time::Duration;

        pub fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(duration) => serializer.serialize_str(&format_duration(*duration)),
                None => serializer.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_bare_milliseconds() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("1000").unwrap(), Duration::from_millis(1000));
        assert_eq!(parse_duration(" 1h ").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_garbage_with_the_text_in_the_message() {
        let error = parse_duration("five seconds").unwrap_err();
        assert!(error.contains("\"five seconds\""), "{error}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn formats_back_to_what_it_reads() {
        for text in ["250ms", "5s", "3m", "1h", "1s500ms"] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(format_duration(duration), text);
            assert_eq!(
                parse_duration(&format_duration(duration)).unwrap(),
                duration
            );
        }
    }
}
