//! The soak's two processes (the mock upstream and the proxy, both the release binary) and what is
//! sampled of them: `VmRSS` and open descriptors from `/proc`, printed as a table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// One sample of both processes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_s: f64,
    pub done: u64,
    pub proxy_rss_kib: u64,
    pub proxy_fds: u64,
    pub mock_rss_kib: u64,
    pub mock_fds: u64,
}

/// A child process killed when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Starts `bin args…` and reads the `listening NAME=ADDR` lines it prints for `names`.
    pub fn start(
        bin: &PathBuf,
        args: &[&str],
        log: &str,
        names: &[&str],
    ) -> Result<(Proc, Vec<SocketAddr>)> {
        use std::io::BufRead;
        let log = std::fs::File::create(std::env::temp_dir().join(log))?;
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo build --release first)", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let proc = Proc(child);
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut addrs = Vec::new();
        for name in names {
            let prefix = format!("listening {name}=");
            let addr = loop {
                let line = lines.next().context("process ended before listening")??;
                if let Some(a) = line.strip_prefix(&prefix) {
                    break a.trim().parse::<SocketAddr>()?;
                }
            };
            addrs.push(addr);
        }
        Ok((proc, addrs))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// `VmRSS` of a process, KiB, and how many descriptors it has open.
pub fn rss_fds(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

pub fn print_table(samples: &[Sample]) {
    println!(
        "{:>7} {:>9} {:>11} {:>9} {:>10} {:>8}",
        "t_s", "done", "proxy_KiB", "proxy_fd", "mock_KiB", "mock_fd"
    );
    for s in samples {
        println!(
            "{:>7.1} {:>9} {:>11} {:>9} {:>10} {:>8}",
            s.t_s, s.done, s.proxy_rss_kib, s.proxy_fds, s.mock_rss_kib, s.mock_fds
        );
    }
}
