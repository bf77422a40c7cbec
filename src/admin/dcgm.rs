//! `/dcgm/metrics`: the two power series of NVIDIA's dcgm-exporter, for benchmarkers that read GPU
//! telemetry in its shape (aiperf's `--gpu-telemetry`, dashboards built on DCGM).
//!
//! Owns the DCGM names, help texts and labels only. Like dcgm-exporter's default counters it writes
//! Prometheus text 0.0.4 (not OpenMetrics: DCGM's counter has no `_total` suffix):
//! `DCGM_FI_DEV_POWER_USAGE` (gauge, W) and `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (counter, mJ) per
//! metered device, labelled `gpu`, `UUID`, `device`, `modelName`, `Hostname`. Values are the
//! sampler's published per-device power and energy, the same figures as `/stats` `devices`; a scrape
//! never reads a meter. Energy counts from joulegate's start, not from the GPU's boot as DCGM's does:
//! consumers take differences, which agree. `pci_bus_id` is left out (joulegate does not know it).

use std::fmt::Write;
use std::sync::OnceLock;

use crate::meter::status::{DeviceSnapshot, StatusSnapshot};

/// The content type dcgm-exporter serves (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Power series name, help and type, as in dcgm-exporter's `default-counters.csv`.
pub const POWER: &str = "DCGM_FI_DEV_POWER_USAGE";
/// Energy series name (milli-joules).
pub const ENERGY: &str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION";

/// The exposition for the sampler's snapshot (empty families when nothing is metered).
pub fn render(sampler: Option<&StatusSnapshot>) -> String {
    let devices = sampler.map_or(&[][..], |s| &s.devices[..]);
    let host = hostname();
    let rows: Vec<(String, &DeviceSnapshot)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (labels(i, d, host), d))
        .collect();
    let mut out = String::with_capacity(256 + rows.len() * 512);
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {POWER} Power draw (in W).");
    let _ = writeln!(out, "# TYPE {POWER} gauge");
    for (l, d) in &rows {
        if let Some(w) = d.power_w {
            let _ = writeln!(out, "{POWER}{{{l}}} {w:.3}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP {ENERGY} Total energy consumption since boot (in mJ)."
    );
    let _ = writeln!(out, "# TYPE {ENERGY} counter");
    for (l, d) in &rows {
        // Whole milli-joules, as DCGM reports them; truncation keeps the series monotone.
        let _ = writeln!(out, "{ENERGY}{{{l}}} {}", d.energy_uj / 1000);
    }
    out
}

/// DCGM's label set for the device at sampler position `index`.
fn labels(index: usize, d: &DeviceSnapshot, host: &str) -> String {
    // An NVML device keeps its NVML index and DCGM's `nvidiaN` name; any other meter (RAPL, a
    // counter file, sim) is numbered by its position and keeps joulegate's label.
    let (gpu, device) = match d.info.label.strip_prefix("nvml:") {
        Some(n) if n.parse::<u32>().is_ok() => (n.to_owned(), format!("nvidia{n}")),
        _ => (index.to_string(), d.info.label.clone()),
    };
    let pairs = [
        ("gpu", gpu.as_str()),
        ("UUID", d.info.uuid.as_deref().unwrap_or("")),
        ("device", device.as_str()),
        ("modelName", d.info.name.as_str()),
        ("Hostname", host),
    ];
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

/// Escapes a label value for the text format (backslash, quote, newline).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The host's name, read once (Linux `/proc`, else `$HOSTNAME`, else empty).
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{DeviceInfo, Method};
    use crate::sampler::PeriodSource;

    fn device(
        label: &str,
        name: &str,
        uuid: Option<&str>,
        uj: u64,
        w: Option<f64>,
    ) -> DeviceSnapshot {
        let mut info = DeviceInfo::new(label, name, Method::Simulated);
        info.uuid = uuid.map(str::to_owned);
        DeviceSnapshot {
            info,
            power_w: w,
            update_period_ms: None,
            update_period_source: PeriodSource::Unknown,
            updates_every_read: true,
            energy_uj: uj,
            energy_joules: uj as f64 / 1e6,
            resets: 0,
            wraps: 0,
            read_errors: 0,
            healthy: true,
            ended: false,
            last_error: None,
        }
    }

    #[test]
    fn nvml_devices_keep_their_index_and_others_their_label() {
        let snap = StatusSnapshot {
            interval_ms: 100.0,
            energy_available: true,
            energy_uj: 0,
            power_w: None,
            ticks: 0,
            merged_intervals: 0,
            dropped_ticks: 0,
            devices: vec![
                device(
                    "nvml:3",
                    "NVIDIA H100",
                    Some("GPU-abc"),
                    1_234_567,
                    Some(301.5),
                ),
                device("sim", "a \"quoted\"\\name", None, 999, None),
            ],
            unavailable: vec![],
        };
        let text = render(Some(&snap));
        let host = escape(hostname());
        assert!(text.contains(&format!(
            "DCGM_FI_DEV_POWER_USAGE{{gpu=\"3\",UUID=\"GPU-abc\",device=\"nvidia3\",modelName=\"NVIDIA H100\",Hostname=\"{host}\"}} 301.500\n"
        )));
        assert!(text.contains(&format!(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu=\"3\",UUID=\"GPU-abc\",device=\"nvidia3\",modelName=\"NVIDIA H100\",Hostname=\"{host}\"}} 1234\n"
        )));
        assert!(text.contains(&format!(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu=\"1\",UUID=\"\",device=\"sim\",modelName=\"a \\\"quoted\\\"\\\\name\",Hostname=\"{host}\"}} 0\n"
        )));
        // No power yet: no power sample for that device.
        assert_eq!(text.matches("DCGM_FI_DEV_POWER_USAGE{").count(), 1);
    }

    #[test]
    fn nothing_metered_gives_empty_families() {
        let text = render(None);
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 0);
        assert_eq!(text.lines().count(), 4);
    }
}
