//! `log_format`: the one key that every command resolves, not only `serve`. Other commands have no
//! config file, so they resolve it from the global flag and its environment variable alone; `serve`
//! adds its file. Errors have the shape of every other key's (key, value, origin).

use std::path::PathBuf;

use super::{ConfigError, Origin};
use crate::logging::LogFormat;

const FLAG: &str = "log-format";
const ENV: &str = "JOULEGATE_LOG_FORMAT";

/// Resolves `log_format`: flag/env over the file (if any) over `text`.
pub fn resolve_log_format(
    flag_value: Option<&str>,
    file_value: Option<&str>,
    file_path: Option<&PathBuf>,
) -> Result<LogFormat, ConfigError> {
    let (value, origin) = match (flag_value, file_value, file_path) {
        (Some(v), _, _) => (
            v,
            Origin::Flag {
                flag: FLAG,
                env: ENV,
            },
        ),
        (None, Some(v), Some(path)) => (v, Origin::File(path.clone())),
        _ => return Ok(LogFormat::default()),
    };
    LogFormat::parse(value).ok_or_else(|| ConfigError::Invalid {
        key: "log_format",
        value: value.to_string(),
        origin,
        reason: "expected text or json".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let path = PathBuf::from("/etc/joulegate.toml");
        assert_eq!(
            resolve_log_format(None, None, None).unwrap(),
            LogFormat::Text
        );
        assert_eq!(
            resolve_log_format(None, Some("json"), Some(&path)).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            resolve_log_format(Some("text"), Some("json"), Some(&path)).unwrap(),
            LogFormat::Text
        );
    }

    #[test]
    fn a_bad_value_names_key_value_and_origin() {
        let e = resolve_log_format(Some("logfmt"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`log_format`") && e.contains("\"logfmt\"") && e.contains("--log-format"),
            "{e}"
        );
        let path = PathBuf::from("/etc/joulegate.toml");
        let e = resolve_log_format(None, Some("JSON"), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/joulegate.toml") && e.contains("\"JSON\""),
            "{e}"
        );
    }
}
