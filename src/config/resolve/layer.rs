//! The layering itself: [`Layer::pick`] takes the flag/env value, else the file value, else the
//! default, remembering where it came from; and the validation helpers shared by every key
//! (addresses, non-negative and positive numbers), whose errors name the key, value and origin.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{ConfigError, Origin};

/// Picks the flag/env value, else the file value, else the default, remembering where it came from.
pub(in crate::config) struct Layer<'a> {
    pub(super) file_path: Option<&'a PathBuf>,
}

impl Layer<'_> {
    pub(in crate::config) fn pick<T: Clone>(
        &self,
        flag_value: &Option<T>,
        file_value: &Option<T>,
        default: T,
        flag: &'static str,
        env: &'static str,
    ) -> (T, Origin) {
        if let Some(v) = flag_value {
            return (v.clone(), Origin::Flag { flag, env });
        }
        if let (Some(v), Some(path)) = (file_value, self.file_path) {
            return (v.clone(), Origin::File(path.clone()));
        }
        (default, Origin::Flag { flag, env })
    }
}

pub(in crate::config) fn invalid(
    key: &'static str,
    value: impl ToString,
    origin: Origin,
    reason: impl ToString,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        origin,
        reason: reason.to_string(),
    }
}

pub(super) fn parse_addr(
    key: &'static str,
    (value, origin): (String, Origin),
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e: std::net::AddrParseError| {
        invalid(
            key,
            &value,
            origin,
            format!("{e} (expected IP:PORT; port 0 picks a free port)"),
        )
    })
}

pub(super) fn non_negative(
    key: &'static str,
    (value, origin): (f64, Origin),
) -> Result<f64, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(invalid(key, value, origin, "must be a finite number >= 0"));
    }
    Ok(value)
}

pub(super) fn positive(
    key: &'static str,
    (value, origin): (u64, Origin),
) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(invalid(key, value, origin, "must be greater than 0"));
    }
    Ok(value)
}
