//! Scripted faults of the mock upstream, chosen per request by the `x-mock-fault` header or for every
//! request by the builder: an error status before anything, a connection reset, a stall, or a
//! mid-stream error event after a number of token chunks.
//!
//! Header syntax: comma-separated items, e.g. `x-mock-fault: status=500`, `reset-after=3`,
//! `stall-after=2`, `error-after=2`. "After N" counts token chunks (or `/v1/responses` deltas) sent,
//! role chunks excluded; `0` means before the first token. For a non-streaming request any `*-after`
//! fault applies when the response would be sent. Unknown items are ignored (the header is a test
//! aid, not an API).

/// The request header that selects faults.
pub const FAULT_HEADER: &str = "x-mock-fault";

/// What goes wrong with one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Answer this status (with vLLM's error body) instead of generating.
    pub status: Option<u16>,
    /// Break the connection after this many token chunks (HTTP/1: closed without the final
    /// zero-length chunk, which clients see as a truncated body).
    pub reset_after: Option<u32>,
    /// Stop sending after this many token chunks and hold the stream open until the client leaves.
    pub stall_after: Option<u32>,
    /// Send `data: {"error": ...}` then `data: [DONE]` (status stays 200) after this many chunks.
    pub error_after: Option<u32>,
}

impl Fault {
    /// Parses the header value; `None` if it names no fault.
    pub fn parse(value: &str) -> Option<Fault> {
        let mut f = Fault::default();
        for item in value.split([',', ';']) {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let Ok(v) = v.trim().parse::<u32>() else {
                continue;
            };
            match k.trim() {
                "status" => f.status = u16::try_from(v).ok().filter(|s| (400..600).contains(s)),
                "reset-after" => f.reset_after = Some(v),
                "stall-after" => f.stall_after = Some(v),
                "error-after" => f.error_after = Some(v),
                _ => {}
            }
        }
        (f != Fault::default()).then_some(f)
    }

    /// The fault to apply before sending token chunk number `sent` (0-based count of chunks sent).
    pub fn due(&self, sent: u32) -> Option<FaultAction> {
        if self.reset_after == Some(sent) {
            Some(FaultAction::Reset)
        } else if self.stall_after == Some(sent) {
            Some(FaultAction::Stall)
        } else if self.error_after == Some(sent) {
            Some(FaultAction::Error)
        } else {
            None
        }
    }

    /// Whether any mid-stream fault is set (they also apply to non-streaming responses).
    pub fn any_after(&self) -> Option<FaultAction> {
        if self.reset_after.is_some() {
            Some(FaultAction::Reset)
        } else if self.stall_after.is_some() {
            Some(FaultAction::Stall)
        } else if self.error_after.is_some() {
            Some(FaultAction::Error)
        } else {
            None
        }
    }
}

/// A fault that fires now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Break the connection.
    Reset,
    /// Go silent until the client leaves.
    Stall,
    /// Send vLLM's mid-stream error event.
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_items() {
        assert_eq!(Fault::parse("status=500").unwrap().status, Some(500));
        let f = Fault::parse("reset-after=3, error-after=1").unwrap();
        assert_eq!((f.reset_after, f.error_after), (Some(3), Some(1)));
        assert_eq!(f.due(1), Some(FaultAction::Error));
        assert_eq!(f.due(3), Some(FaultAction::Reset));
        assert_eq!(f.due(2), None);
        assert_eq!(Fault::parse("nonsense"), None);
        assert_eq!(Fault::parse("status=200"), None);
        assert_eq!(Fault::parse("stall-after=x"), None);
    }
}
