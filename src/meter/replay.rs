//! `replay:PATH`: a CSV energy trace (the format `joulegate log-power` writes) read back as a meter.
//!
//! This module owns the trace format: header `time_s,device,energy_j,power_w`, one row per device per
//! sample, `time_s` seconds since the start of the log, `energy_j` cumulative joules since the start
//! (empty when that sample's reading failed), `power_w` informative (ignored here). Devices keep their
//! labels from the trace, so a replay stands in for the meters that were logged.
//!
//! Reading at time `t` returns the trace's energy linearly interpolated at `t - start`, where `start`
//! is the meter's first read. Before the first row the first value is held; past the last row the last
//! value is held and readings are marked `ended` (the sampler reports the device unhealthy: its energy
//! stops growing because the trace ran out, not because the device idles).

use std::path::{Path, PathBuf};

use super::{DeviceInfo, Meter, Method, ReadError, Reading};

/// The CSV header line (without newline).
pub const HEADER: &str = "time_s,device,energy_j,power_w";

/// Why a trace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("cannot read trace {path}: {source}")]
    Io {
        /// The trace.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The first line is not [`HEADER`].
    #[error("trace header is {0:?}, expected {HEADER:?}")]
    Header(String),
    /// A row is malformed.
    #[error("trace line {line}: {reason}")]
    Row {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// No row with an energy value.
    #[error("trace has no energy rows")]
    Empty,
}

/// A parsed trace: per device (in order of first appearance), `(time_ns, energy_uj)` points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Device label and its points, time non-decreasing.
    pub devices: Vec<(String, Vec<(u64, u64)>)>,
}

impl Trace {
    /// Parses trace text.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("").trim_end_matches('\r');
        if header.trim() != HEADER {
            return Err(TraceError::Header(header.chars().take(80).collect()));
        }
        let mut trace = Trace::default();
        for (i, raw) in lines.enumerate() {
            let line = i + 2;
            let row = raw.trim_end_matches('\r');
            if row.trim().is_empty() {
                continue;
            }
            let row_err = |reason| TraceError::Row { line, reason };
            let fields = split_csv(row).ok_or_else(|| row_err("unbalanced quotes"))?;
            let [time, device, energy, _power] = fields.as_slice() else {
                return Err(row_err("expected 4 fields"));
            };
            let t_ns = parse_fixed(time, 9)
                .ok_or_else(|| row_err("time_s is not a non-negative number"))?;
            if energy.trim().is_empty() {
                continue; // an unavailable sample
            }
            let e_uj = parse_fixed(energy, 6)
                .ok_or_else(|| row_err("energy_j is not a non-negative number"))?;
            let idx = match trace.devices.iter().position(|(d, _)| d == device) {
                Some(i) => i,
                None => {
                    trace.devices.push((device.clone(), Vec::new()));
                    trace.devices.len() - 1
                }
            };
            let points = &mut trace.devices[idx].1;
            if points.last().is_some_and(|&(t, _)| t > t_ns) {
                return Err(row_err("time_s goes backwards for this device"));
            }
            points.push((t_ns, e_uj));
        }
        if trace.devices.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(trace)
    }

    /// Energy of device `index` at `t_ns` after the trace's origin, and whether `t_ns` is past its end.
    pub fn energy_at(&self, index: usize, t_ns: u64) -> Option<(u64, bool)> {
        let points = &self.devices.get(index)?.1;
        let (&(t_first, e_first), &(t_last, e_last)) = (points.first()?, points.last()?);
        if t_ns <= t_first {
            return Some((e_first, false));
        }
        if t_ns >= t_last {
            return Some((e_last, t_ns > t_last));
        }
        // First point strictly after t; its predecessor is at or before t.
        let hi = points.partition_point(|&(t, _)| t <= t_ns);
        let ((t0, e0), (t1, e1)) = (points[hi - 1], points[hi]);
        let span = i128::from(t1 - t0);
        let de = i128::from(e1) - i128::from(e0);
        let e = i128::from(e0) + de * i128::from(t_ns - t0) / span.max(1);
        Some((u64::try_from(e).unwrap_or(0), false))
    }
}

/// Splits one CSV row, honouring `"quoted, fields"` with `""` escapes.
fn split_csv(row: &str) -> Option<Vec<String>> {
    let mut fields = Vec::with_capacity(4);
    let mut cur = String::new();
    let mut chars = row.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(cur);
    Some(fields)
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Parses a non-negative decimal into an integer scaled by `10^decimals` (truncating extra digits).
fn parse_fixed(s: &str, decimals: u32) -> Option<u64> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return None;
    }
    let mut v = int.parse::<u64>().ok()?.checked_mul(10u64.pow(decimals))?;
    let mut scale = 10u64.pow(decimals);
    for b in frac.bytes().take(decimals as usize) {
        scale /= 10;
        v = v.checked_add(u64::from(b - b'0') * scale)?;
    }
    Some(v)
}

/// A meter replaying a [`Trace`].
#[derive(Debug)]
pub struct ReplayMeter {
    trace: Trace,
    infos: Vec<DeviceInfo>,
    start_ns: Option<u64>,
}

impl ReplayMeter {
    /// Reads and parses the trace at `path`.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_trace(
            Trace::parse(&text)?,
            &path.display().to_string(),
        ))
    }

    /// A meter over an already parsed trace; `origin` names it in device descriptions.
    pub fn from_trace(trace: Trace, origin: &str) -> Self {
        let infos = trace
            .devices
            .iter()
            .map(|(label, _)| {
                DeviceInfo::new(label.clone(), format!("replay of {origin}"), Method::Replay)
            })
            .collect();
        ReplayMeter {
            trace,
            infos,
            start_ns: None,
        }
    }
}

impl Meter for ReplayMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize, now_ns: u64) -> Result<Reading, ReadError> {
        let start = *self.start_ns.get_or_insert(now_ns);
        let (energy_uj, ended) = self
            .trace
            .energy_at(index, now_ns.saturating_sub(start))
            .ok_or(ReadError::NoSuchDevice(index))?;
        Ok(Reading {
            energy_uj,
            at_ns: now_ns,
            ended,
            power_mw: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "time_s,device,energy_j,power_w\n\
        0.000000000,gpu,0.000000,\n\
        0.000000000,\"a,b\",5.000000,\n\
        0.100000000,gpu,10.000000,100.000\n\
        0.100000000,\"a,b\",,\n\
        0.200000000,gpu,30.000000,200.000\n\
        0.200000000,\"a,b\",7.500000,12.500\n";

    #[test]
    fn parses_and_interpolates() {
        let trace = Trace::parse(TRACE).expect("trace");
        assert_eq!(
            trace.devices[0],
            (
                "gpu".to_owned(),
                vec![(0, 0), (100_000_000, 10_000_000), (200_000_000, 30_000_000)]
            )
        );
        assert_eq!(
            trace.devices[1],
            (
                "a,b".to_owned(),
                vec![(0, 5_000_000), (200_000_000, 7_500_000)]
            )
        );
        let mut m = ReplayMeter::from_trace(trace, "test");
        // Start at clock time 1000 s: trace time is relative to the first read.
        let t0 = 1_000_000_000_000;
        assert_eq!(
            m.read(0, t0).ok(),
            Some(Reading {
                energy_uj: 0,
                at_ns: t0,
                ended: false,
                power_mw: None,
            })
        );
        assert_eq!(
            m.read(0, t0 + 50_000_000).map(|r| r.energy_uj).ok(),
            Some(5_000_000)
        );
        assert_eq!(
            m.read(0, t0 + 150_000_000).map(|r| r.energy_uj).ok(),
            Some(20_000_000)
        );
        assert_eq!(
            m.read(1, t0 + 100_000_000).map(|r| r.energy_uj).ok(),
            Some(6_250_000)
        );
        let end = m.read(0, t0 + 200_000_000).expect("read");
        assert_eq!((end.energy_uj, end.ended), (30_000_000, false));
        let past = m.read(0, t0 + 900_000_000).expect("read");
        assert_eq!((past.energy_uj, past.ended), (30_000_000, true));
        assert!(matches!(m.read(2, t0), Err(ReadError::NoSuchDevice(2))));
    }

    #[test]
    fn rejects_bad_traces_with_the_line() {
        assert!(matches!(Trace::parse("a,b\n"), Err(TraceError::Header(_))));
        assert!(matches!(Trace::parse(""), Err(TraceError::Header(_))));
        assert!(matches!(
            Trace::parse(&format!("{HEADER}\n")),
            Err(TraceError::Empty)
        ));
        let bad = |row: &str| Trace::parse(&format!("{HEADER}\n0,gpu,0,\n{row}\n"));
        assert!(matches!(
            bad("x,gpu,1,"),
            Err(TraceError::Row { line: 3, .. })
        ));
        assert!(matches!(
            bad("1,gpu,-1,"),
            Err(TraceError::Row { line: 3, .. })
        ));
        assert!(matches!(bad("1,gpu"), Err(TraceError::Row { line: 3, .. })));
        assert!(matches!(
            bad("1,\"gpu,1,"),
            Err(TraceError::Row { line: 3, .. })
        ));
        let back = Trace::parse(&format!("{HEADER}\n2,gpu,0,\n1,gpu,1,\n"));
        assert!(matches!(back, Err(TraceError::Row { line: 3, .. })));
        assert_eq!(parse_fixed("1.5", 9), Some(1_500_000_000));
        assert_eq!(parse_fixed("99999999999", 9), None);
    }

    #[test]
    fn csv_fields_round_trip() {
        let f = csv_field("a,\"b\"");
        assert_eq!(
            split_csv(&format!("1,{f},2,3")),
            Some(vec!["1".into(), "a,\"b\"".into(), "2".into(), "3".into()])
        );
        assert_eq!(csv_field("plain"), "plain");
    }
}
