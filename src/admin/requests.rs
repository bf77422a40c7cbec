//! `/requests/{id}` and `/requests?limit=N&tag=T`: finished-request records from the bounded ring
//! (most recent first) and requests still in flight with their energy so far.
//!
//! Owns the query parsing and the in-flight view. Records are served exactly as accounting made
//! them (DESIGN §3 field names); an in-flight entry has the same names where they apply, plus
//! `state`, and its energy is provisional (settled figure extended to now, as response headers
//! compute it).

use serde::Serialize;

use super::AdminState;
use crate::ledger::record::joules;
use crate::ledger::RequestRecord;
use crate::observe::{parse_public_id, Outcome, RequestProgress};

/// Default number of records `/requests` returns.
pub const DEFAULT_LIMIT: usize = 100;

/// What `/requests` was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// At most this many finished records (default [`DEFAULT_LIMIT`], capped by the ring).
    pub limit: Option<usize>,
    /// Only requests with this `x-energy-tag`.
    pub tag: Option<String>,
}

/// Why a query was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `limit` is not a non-negative integer.
    #[error("`limit` must be a non-negative integer, got {0:?}")]
    Limit(String),
    /// A parameter is not valid percent-encoded UTF-8.
    #[error("query parameter `{0}` is not valid percent-encoded UTF-8")]
    Encoding(String),
}

impl ListQuery {
    /// Parses `limit` and `tag` from a query string; other parameters are ignored.
    pub fn parse(query: Option<&str>) -> Result<ListQuery, QueryError> {
        let mut q = ListQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || percent_decode(v).ok_or_else(|| QueryError::Encoding(k.to_owned()));
            match k {
                "limit" => {
                    let v = value()?;
                    q.limit = Some(v.parse().map_err(|_| QueryError::Limit(v))?);
                }
                "tag" => q.tag = Some(value()?),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Decodes `%XX` escapes and `+` (form encoding of a space).
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                // from_str_radix alone would accept a sign (`%+1`).
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request not retired yet, with its energy so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InFlightView {
    /// Public id (`jg-…`).
    pub id: String,
    /// `in_flight`, or `settling` once the response ended and accounting has not settled it yet.
    pub state: &'static str,
    /// The request's `model`.
    pub model: Option<String>,
    /// API label.
    pub endpoint: &'static str,
    /// Keyed hash of the API key.
    pub key_hash: Option<String>,
    /// The `x-energy-tag` header.
    pub tag: Option<String>,
    /// Whether the response streams.
    pub stream: bool,
    /// Arrival, RFC 3339.
    pub arrival: String,
    /// First completion token, RFC 3339.
    pub first_token: Option<String>,
    /// Prompt tokens so far (estimated until the server's count arrives).
    pub prompt_tokens: u64,
    /// Completion tokens so far.
    pub completion_tokens: u64,
    /// Energy so far, joules (provisional).
    pub energy_joules: f64,
    /// Active energy so far, joules.
    pub active_joules: f64,
    /// Trust in the figures so far (`ok`, `estimated`, `unavailable`).
    pub status: &'static str,
}

impl InFlightView {
    /// The view of `p` at `now_ns`.
    pub fn of(p: &RequestProgress, state: &AdminState, now_ns: u64) -> Self {
        let s = p.snapshot();
        let e = p.energy_now(now_ns, &state.in_flight.rates);
        InFlightView {
            id: p.meta.public_id(),
            state: if s.outcome == Outcome::InFlight {
                "in_flight"
            } else {
                "settling"
            },
            model: p.meta.model.clone(),
            endpoint: p.meta.endpoint.as_str(),
            key_hash: p.meta.key_hash.clone(),
            tag: p.meta.tag.clone(),
            stream: p.meta.stream,
            arrival: state.clock.rfc3339(p.meta.arrival_ns),
            first_token: (s.first_token_ns != 0).then(|| state.clock.rfc3339(s.first_token_ns)),
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            energy_joules: joules(e.energy_uj),
            active_joules: joules(e.active_uj),
            status: e.status.as_str(),
        }
    }
}

/// The `/requests` document.
#[derive(Debug, Serialize)]
pub struct RequestList {
    /// Requests not retired yet (matching the tag), in all.
    pub in_flight_total: usize,
    /// Up to `limit` of them, newest first.
    pub in_flight: Vec<InFlightView>,
    /// Finished records: the `limit` most recently retired, newest end first.
    #[serde(serialize_with = "records")]
    pub requests: Vec<std::sync::Arc<RequestRecord>>,
}

/// Serialises shared records (serde's `rc` feature is not enabled in this crate).
fn records<S: serde::Serializer>(
    v: &[std::sync::Arc<RequestRecord>],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|r| &**r))
}

/// Lists requests for `q`.
pub fn list(state: &AdminState, q: &ListQuery) -> RequestList {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_LIMIT)
        .min(state.config.record_capacity);
    let tag = q.tag.as_deref();
    let now = state.clock.now_ns();
    let mut live: Vec<_> = state
        .in_flight
        .all()
        .into_iter()
        .filter(|p| tag.map_or(true, |t| p.meta.tag.as_deref() == Some(t)))
        .collect();
    let in_flight_total = live.len();
    // Newest first, bounded like the records: the answer never grows with the load.
    live.sort_unstable_by_key(|p| std::cmp::Reverse(p.meta.id));
    live.truncate(limit);
    // The ring is in retirement order, and requests settled by the same tick retire in no
    // particular order: show the newest `limit` retired ones by end time (then arrival), newest
    // first.
    let mut requests = state.accounting.recent(limit, tag);
    requests.sort_by_key(|r| std::cmp::Reverse((r.end_ns, r.arrival_ns, r.key)));
    RequestList {
        in_flight_total,
        in_flight: live
            .iter()
            .map(|p| InFlightView::of(p, state, now))
            .collect(),
        requests,
    }
}

/// What `/requests/{id}` found.
#[derive(Debug)]
pub enum Lookup {
    /// The final record.
    Finished(std::sync::Arc<RequestRecord>),
    /// Not retired yet.
    Live(Box<InFlightView>),
    /// The id is well formed but unknown (never seen, or evicted from the ring).
    NotFound,
    /// The id is not of the `jg-<16 hex>` form.
    Malformed,
}

/// Looks request `public_id` up: in flight first, then the ring. In that order there is no gap:
/// accounting pushes a record into the ring before it removes the request from the registry, so a
/// request missing from the registry is already in the ring (unless evicted or never seen).
pub fn lookup(state: &AdminState, public_id: &str) -> Lookup {
    let Some(id) = parse_public_id(public_id) else {
        return Lookup::Malformed;
    };
    if let Some(p) = state.in_flight.get(id) {
        return Lookup::Live(Box::new(InFlightView::of(&p, state, state.clock.now_ns())));
    }
    match state.accounting.record(id) {
        Some(r) => Lookup::Finished(r),
        None => Lookup::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(ListQuery::parse(None), Ok(ListQuery::default()));
        assert_eq!(
            ListQuery::parse(Some("limit=5&tag=run%201&x=y")),
            Ok(ListQuery {
                limit: Some(5),
                tag: Some("run 1".into())
            })
        );
        assert_eq!(
            ListQuery::parse(Some("tag=a+b&limit")).map(|q| q.tag),
            Err(QueryError::Limit(String::new()))
        );
        assert_eq!(
            ListQuery::parse(Some("tag=a+b")).map(|q| q.tag),
            Ok(Some("a b".into()))
        );
        assert_eq!(
            ListQuery::parse(Some("limit=-1")),
            Err(QueryError::Limit("-1".into()))
        );
        assert_eq!(
            ListQuery::parse(Some("tag=%zz")),
            Err(QueryError::Encoding("tag".into()))
        );
        assert_eq!(
            ListQuery::parse(Some("tag=%ff")),
            Err(QueryError::Encoding("tag".into()))
        );
        assert_eq!(
            ListQuery::parse(Some("tag=%4")),
            Err(QueryError::Encoding("tag".into()))
        );
    }
}
