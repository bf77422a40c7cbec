//! The lines of a batch job, pure and without I/O: an input line of OpenAI's batch file
//! (`{"custom_id","method","url","body"}`), an output line in OpenAI's batch output shape
//! (`{"id","custom_id","response":{"status_code","request_id","body"},"error"}`) with joulegate's
//! `energy` object read from the response's `x-energy-*` headers, and the job's running totals.

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::proxy::headers::{
    ENERGY_ACTIVE_JOULES, ENERGY_CO2_GRAMS, ENERGY_COMPLETION_TOKENS, ENERGY_JOULES,
    ENERGY_PROMPT_TOKENS, ENERGY_REQUEST_ID, ENERGY_STATUS,
};

/// One request of the input file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct InputLine {
    /// The caller's id of the request, copied to its output line.
    pub custom_id: String,
    /// HTTP method (OpenAI batches only use `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// Path of the endpoint, e.g. `/v1/chat/completions`.
    pub url: String,
    /// The request body, sent as JSON.
    #[serde(default)]
    pub body: Value,
}

fn post() -> String {
    "POST".into()
}

/// Why an input line could not be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    /// Not a JSON object with `custom_id` and `url`.
    #[error("line {line}: not a batch request ({reason})")]
    Invalid { line: usize, reason: String },
    /// The same `custom_id` twice in one input file.
    #[error("line {line}: custom_id {custom_id:?} appears twice")]
    Duplicate { line: usize, custom_id: String },
    /// `url` is not a path on the server.
    #[error("line {line}: url {url:?} must be a path starting with '/'")]
    Url { line: usize, url: String },
}

/// Parses line `line` (1-based) of the input file.
pub fn parse_input(line: usize, text: &str) -> Result<InputLine, LineError> {
    let input: InputLine = serde_json::from_str(text).map_err(|e| LineError::Invalid {
        line,
        reason: e.to_string(),
    })?;
    if !input.url.starts_with('/') {
        return Err(LineError::Url {
            line,
            url: input.url,
        });
    }
    Ok(input)
}

/// The energy of one request as its response headers carried it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    /// `x-energy-request-id`.
    pub request_id: Option<String>,
    /// `x-energy-joules`.
    pub joules: Option<f64>,
    /// `x-energy-active-joules`.
    pub active_joules: Option<f64>,
    /// `x-energy-prompt-tokens`.
    pub prompt_tokens: Option<u64>,
    /// `x-energy-completion-tokens`.
    pub completion_tokens: Option<u64>,
    /// `x-energy-status`.
    pub status: Option<String>,
    /// `x-energy-co2-grams`, when carbon is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co2_grams: Option<f64>,
}

impl Energy {
    /// Reads the `x-energy-*` headers; `None` when the response carries none (not through
    /// joulegate, or not a model request).
    pub fn from_headers(h: &HeaderMap) -> Option<Energy> {
        let text = |name| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let num = |name| text(name).and_then(|t| t.parse::<f64>().ok());
        let int = |name| text(name).and_then(|t| t.parse::<u64>().ok());
        let e = Energy {
            request_id: text(ENERGY_REQUEST_ID),
            joules: num(ENERGY_JOULES),
            active_joules: num(ENERGY_ACTIVE_JOULES),
            prompt_tokens: int(ENERGY_PROMPT_TOKENS),
            completion_tokens: int(ENERGY_COMPLETION_TOKENS),
            status: text(ENERGY_STATUS),
            co2_grams: num(ENERGY_CO2_GRAMS),
        };
        (e != Energy::default()).then_some(e)
    }
}

/// The `response` of an output line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputResponse {
    /// HTTP status.
    pub status_code: u16,
    /// The upstream's `x-request-id`, else joulegate's request id.
    pub request_id: Option<String>,
    /// The body: JSON when it parses, else its text.
    pub body: Value,
}

/// The `error` of an output line (a request that got no HTTP response).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputError {
    /// A short code: `invalid_request` or `request_failed`.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// One line of the output file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputLine {
    /// `batch_req_` and a number unique within the job.
    pub id: String,
    /// The input's `custom_id`.
    pub custom_id: String,
    /// The response, if one came.
    pub response: Option<OutputResponse>,
    /// Why no response came.
    pub error: Option<OutputError>,
    /// joulegate's figures for the request, when the response carried them.
    pub energy: Option<Energy>,
}

/// The job's totals (resumed lines included), printed at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Output lines in the file after this run.
    pub lines: u64,
    /// Requests sent by this run.
    pub sent: u64,
    /// Input lines skipped because their `custom_id` was already in the output.
    pub skipped: u64,
    /// Lines with a 2xx response.
    pub succeeded: u64,
    /// Lines with an error status or no response.
    pub failed: u64,
    /// Energy of the lines that carried it, joules.
    pub energy_joules: f64,
    /// Of it, above the idle baseline.
    pub active_joules: f64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Energy per (prompt + completion) token.
    pub joules_per_token: Option<f64>,
    /// Wall time of this run, seconds.
    pub wall_s: f64,
}

impl Summary {
    /// Counts one output line.
    pub fn add(&mut self, line: &OutputLine) {
        self.lines += 1;
        match &line.response {
            Some(r) if (200..300).contains(&r.status_code) => self.succeeded += 1,
            _ => self.failed += 1,
        }
        if let Some(e) = &line.energy {
            self.energy_joules += e.joules.unwrap_or(0.0);
            self.active_joules += e.active_joules.unwrap_or(0.0);
            self.prompt_tokens += e.prompt_tokens.unwrap_or(0);
            self.completion_tokens += e.completion_tokens.unwrap_or(0);
        }
        let tokens = self.prompt_tokens + self.completion_tokens;
        self.joules_per_token = (tokens > 0).then(|| self.energy_joules / tokens as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_are_validated() {
        let ok = parse_input(
            1,
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#,
        )
        .unwrap();
        assert_eq!(ok.custom_id, "a");
        assert_eq!(ok.body["model"], "m");
        assert!(matches!(
            parse_input(2, "{}"),
            Err(LineError::Invalid { line: 2, .. })
        ));
        assert!(matches!(
            parse_input(3, r#"{"custom_id":"a","url":"http://x/v1"}"#),
            Err(LineError::Url { line: 3, .. })
        ));
        assert!(parse_input(4, "not json").is_err());
    }

    #[test]
    fn energy_comes_from_the_headers_and_sums_in_the_summary() {
        let mut h = HeaderMap::new();
        assert_eq!(Energy::from_headers(&h), None);
        h.insert(ENERGY_REQUEST_ID, "jg-1".parse().unwrap());
        h.insert(ENERGY_JOULES, "2.5".parse().unwrap());
        h.insert(ENERGY_ACTIVE_JOULES, "2".parse().unwrap());
        h.insert(ENERGY_PROMPT_TOKENS, "3".parse().unwrap());
        h.insert(ENERGY_COMPLETION_TOKENS, "2".parse().unwrap());
        h.insert(ENERGY_STATUS, "ok".parse().unwrap());
        let e = Energy::from_headers(&h).unwrap();
        assert_eq!((e.joules, e.prompt_tokens), (Some(2.5), Some(3)));
        let line = OutputLine {
            id: "batch_req_1".into(),
            custom_id: "a".into(),
            response: Some(OutputResponse {
                status_code: 200,
                request_id: None,
                body: Value::Null,
            }),
            error: None,
            energy: Some(e),
        };
        let mut s = Summary::default();
        s.add(&line);
        s.add(&OutputLine {
            response: None,
            energy: None,
            ..line.clone()
        });
        assert_eq!((s.lines, s.succeeded, s.failed), (2, 1, 1));
        assert_eq!(s.joules_per_token, Some(0.5));
        // Output lines read back the same (resume).
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(serde_json::from_str::<OutputLine>(&text).unwrap(), line);
    }
}
