//! Headless Chromium for the live page's test (`tests/live_page.rs`) and its screenshot example
//! (`examples/live_page.rs`, which includes this file by path): find the browser, dump a page's DOM
//! once its script has run, or take a screenshot.
//!
//! Chromium runs with a fresh profile in a temporary folder (parallel runs never share one),
//! without its sandbox (CI runs as root, where the sandbox refuses to start) and under a time
//! guard: a browser that hangs is killed and reported, never waited on for ever.

#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a browser run may take before it is killed (a guard, not a measurement).
pub const GUARD: Duration = Duration::from_secs(90);

/// The browser to drive: `$JOULEGATE_CHROMIUM` (none if that is not a file), else the first of `chromium`, `chromium-browser`,
/// `google-chrome`, `google-chrome-stable` found on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("JOULEGATE_CHROMIUM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|p| p.is_file())
}

/// What went wrong running the browser.
#[derive(Debug)]
pub enum BrowserError {
    /// It could not be started, or its temporary profile not made.
    Io(std::io::Error),
    /// It ran past [`GUARD`] and was killed.
    Hung,
    /// It exited with an error; its stderr.
    Failed(String),
}

impl std::fmt::Display for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrowserError::Io(e) => write!(f, "cannot run chromium: {e}"),
            BrowserError::Hung => write!(f, "chromium ran past {GUARD:?} and was killed"),
            BrowserError::Failed(err) => write!(f, "chromium failed: {err}"),
        }
    }
}

/// Loads `url`, lets the page run for `budget_ms` of virtual time (its timers run fast, its
/// fetches are waited for) and returns the DOM as the page's script left it.
pub fn dump_dom(bin: &Path, url: &str, budget_ms: u64) -> Result<String, BrowserError> {
    let out = run(
        bin,
        &[
            format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom".into(),
            url.into(),
        ],
    )?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Loads `url`, lets it run for `budget_ms` of virtual time and writes a PNG of
/// `width`×`height` to `file`.
pub fn screenshot(
    bin: &Path,
    url: &str,
    file: &Path,
    (width, height): (u32, u32),
    budget_ms: u64,
) -> Result<(), BrowserError> {
    let file = std::path::absolute(file).map_err(BrowserError::Io)?;
    run(
        bin,
        &[
            format!("--virtual-time-budget={budget_ms}"),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".into(),
            format!("--screenshot={}", file.display()),
            url.into(),
        ],
    )?;
    if file.is_file() {
        Ok(())
    } else {
        Err(BrowserError::Failed(format!(
            "no screenshot at {}",
            file.display()
        )))
    }
}

fn run(bin: &Path, args: &[String]) -> Result<Vec<u8>, BrowserError> {
    let profile = tempfile::tempdir().map_err(BrowserError::Io)?;
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BrowserError::Io)?;
    // Read both pipes on threads so a chatty browser never blocks on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let deadline = Instant::now() + GUARD;
    let status = loop {
        match child.try_wait().map_err(BrowserError::Io)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BrowserError::Hung);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(BrowserError::Failed(
            String::from_utf8_lossy(&stderr).into_owned(),
        ))
    }
}
