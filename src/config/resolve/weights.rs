//! The attribution keys: prompt size estimate, carbon intensity and PUE, the key-hash salt, idle
//! power, the default energy weights the settlement lag and the hold for the calibration (`bytes_per_token` .. `calibration_hold_ms`).

use super::layer::{invalid, non_negative, Layer};
use crate::cli::ServeArgs;
use crate::config::{defaults, ConfigError, FileConfig, Origin};

/// The attribution keys, validated; the lag still in milliseconds.
pub(super) struct Weights {
    pub(super) bytes_per_token: f64,
    pub(super) carbon_intensity_g_per_kwh: Option<f64>,
    pub(super) pue: f64,
    pub(super) key_salt: Option<String>,
    pub(super) idle_watts: Option<f64>,
    pub(super) prefill_joules_per_token: f64,
    pub(super) decode_joules_per_token: f64,
    pub(super) context_joules_per_token: f64,
    pub(super) settle_lag_ms: u64,
    pub(super) calibration_hold_ms: u64,
}

/// Resolves and validates the attribution model's keys, in the order [`crate::config::Config::resolve`] always did.
pub(super) fn resolve(
    l: &Layer<'_>,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Weights, ConfigError> {
    let (bytes_per_token, bpt_origin) = l.pick(
        &args.bytes_per_token,
        &file.bytes_per_token,
        defaults::BYTES_PER_TOKEN,
        "bytes-per-token",
        "JOULEGATE_BYTES_PER_TOKEN",
    );
    if !(bytes_per_token.is_finite() && bytes_per_token > 0.0) {
        return Err(invalid(
            "bytes_per_token",
            bytes_per_token,
            bpt_origin,
            "must be a positive number",
        ));
    }
    let carbon_flag = args.carbon_intensity_g_per_kwh.map(Some);
    let carbon_file = file.carbon_intensity_g_per_kwh.map(Some);
    let (carbon_intensity_g_per_kwh, carbon_origin) = l.pick(
        &carbon_flag,
        &carbon_file,
        None,
        "carbon-intensity-g-per-kwh",
        "JOULEGATE_CARBON_INTENSITY_G_PER_KWH",
    );
    if let Some(c) = carbon_intensity_g_per_kwh {
        if !(c.is_finite() && c >= 0.0) {
            return Err(invalid(
                "carbon_intensity_g_per_kwh",
                c,
                carbon_origin,
                "must be a number >= 0",
            ));
        }
    }
    let (pue, pue_origin) = l.pick(&args.pue, &file.pue, defaults::PUE, "pue", "JOULEGATE_PUE");
    if !(pue.is_finite() && pue >= 1.0) {
        return Err(invalid("pue", pue, pue_origin, "must be a number >= 1.0"));
    }
    let (key_salt, _) = l.pick(
        &args.key_salt.clone().map(Some),
        &file.key_salt.clone().map(Some),
        None,
        "key-salt",
        "JOULEGATE_KEY_SALT",
    );
    let idle_watts = match l.pick(
        &args.idle_watts.map(Some),
        &file.idle_watts.map(Some),
        None,
        "idle-watts",
        "JOULEGATE_IDLE_WATTS",
    ) {
        (Some(w), origin) => Some(non_negative("idle_watts", (w, origin))?),
        (None, _) => None,
    };
    let prefill_joules_per_token = non_negative(
        "prefill_joules_per_token",
        l.pick(
            &args.prefill_joules_per_token,
            &file.prefill_joules_per_token,
            defaults::PREFILL_JOULES_PER_TOKEN,
            "prefill-joules-per-token",
            "JOULEGATE_PREFILL_JOULES_PER_TOKEN",
        ),
    )?;
    let decode_joules_per_token = non_negative(
        "decode_joules_per_token",
        l.pick(
            &args.decode_joules_per_token,
            &file.decode_joules_per_token,
            defaults::DECODE_JOULES_PER_TOKEN,
            "decode-joules-per-token",
            "JOULEGATE_DECODE_JOULES_PER_TOKEN",
        ),
    )?;
    let context_joules_per_token = non_negative(
        "context_joules_per_token",
        l.pick(
            &args.context_joules_per_token,
            &file.context_joules_per_token,
            defaults::CONTEXT_JOULES_PER_TOKEN,
            "context-joules-per-token",
            "JOULEGATE_CONTEXT_JOULES_PER_TOKEN",
        ),
    )?;
    let (lag_lo, lag_hi) = defaults::SETTLE_LAG_MS_RANGE;
    let (settle_lag_ms, lag_origin) = l.pick(
        &args.settle_lag_ms,
        &file.settle_lag_ms,
        defaults::SETTLE_LAG_MS,
        "settle-lag-ms",
        "JOULEGATE_SETTLE_LAG_MS",
    );
    if !(lag_lo..=lag_hi).contains(&settle_lag_ms) {
        return Err(invalid(
            "settle_lag_ms",
            settle_lag_ms,
            lag_origin,
            "must be between 100 and 60000 (ms)",
        ));
    }
    let (calibration_hold_ms, hold_origin) = l.pick(
        &args.calibration_hold_ms,
        &file.calibration_hold_ms,
        defaults::CALIBRATION_HOLD_MS,
        "calibration-hold-ms",
        "JOULEGATE_CALIBRATION_HOLD_MS",
    );
    if calibration_hold_ms > defaults::CALIBRATION_HOLD_MS_LIMIT {
        return Err(invalid(
            "calibration_hold_ms",
            calibration_hold_ms,
            hold_origin,
            "must be at most 60000 (ms; 0 turns the hold off)",
        ));
    }
    if prefill_joules_per_token + decode_joules_per_token <= 0.0 {
        return Err(invalid(
            "decode_joules_per_token",
            decode_joules_per_token,
            Origin::Flag {
                flag: "decode-joules-per-token",
                env: "JOULEGATE_DECODE_JOULES_PER_TOKEN",
            },
            "prefill and decode weights cannot both be 0",
        ));
    }
    Ok(Weights {
        bytes_per_token,
        carbon_intensity_g_per_kwh,
        pue,
        key_salt,
        idle_watts,
        prefill_joules_per_token,
        decode_joules_per_token,
        context_joules_per_token,
        settle_lag_ms,
        calibration_hold_ms,
    })
}
