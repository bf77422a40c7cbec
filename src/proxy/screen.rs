//! The request-head screen: an I/O wrapper on each client connection that reads HTTP/1.x request
//! framing before hyper does and refuses the ambiguous framing that request smuggling relies on.
//!
//! hyper already refuses conflicting `Content-Length` values, a `Transfer-Encoding` whose last
//! coding is not `chunked`, header names with spaces and obsolete line folding (400, connection
//! closed). It accepts, per RFC 9112's leniencies, a request carrying both `Content-Length` and
//! `Transfer-Encoding` (it drops the length and closes the connection after answering, but still
//! hands the request to the service, which would forward it), identical duplicate lengths, and
//! bare LF line endings; and from the service's side the dropped `Content-Length` is invisible.
//! The screen sees the bytes, so it decides: a head with any of these is never completed as the
//! client sent it. The screen ends it instead with the private header
//! [`super::headers::REFUSED_HEAD`] naming the [`Refusal`] and `connection: close`; the service
//! answers that with a 400 (431 for an oversized head) in the OpenAI error shape through
//! [`super::error::error_response`], and hyper closes the connection after it. Nothing of a refused
//! request reaches the upstream, and nothing pipelined after it is read.
//!
//! It forwards bytes as soon as it may: the request line at once (so hyper's
//! `header_read_timeout` and the HTTP/2 preface detection see a slow client), each complete
//! header line once screened, the framing lines (`Content-Length`, `Transfer-Encoding`) at the end
//! of the head, and bodies as they come (their framing tracked, so that the next pipelined head is
//! found: a fixed length, or chunks, extensions and trailers). hyper cannot dispatch a head before
//! its final empty line, which the screen writes only once the head passed. An HTTP/2 connection
//! (the `PRI` preface) and a `CONNECT` tunnel pass through unscreened after their first line. A
//! body whose chunked framing is broken ends the connection with an I/O error (hyper would refuse
//! it too). It must not touch response bytes (writes pass straight through) nor hold more than one
//! head ([`MAX_HEAD_BYTES`]).
//!
//! Parts: the refusal kinds (`refusal`), the head state machine (`machine`), chunked body
//! framing (`chunked`) and the I/O wrapper (`screened`), all private, re-exported here.

mod chunked;
mod machine;
mod refusal;
mod screened;

pub use chunked::FramingError;
pub use machine::Screen;
pub use refusal::Refusal;
pub use screened::Screened;

/// Longest request head (request line and header fields) screened; longer ones are refused with 431.
/// uvicorn, in front of vLLM, refuses heads over 16 KiB, so this never refuses what vLLM accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// hyper's per-connection buffer bound on client connections: what one may hold of bytes read but
/// not yet consumed, or written but not yet taken by the peer. hyper's default (about 400 KiB) made
/// each slow reader cost about 600 KiB; this keeps room for the largest head the screen lets
/// through, plus a margin. Upstream connections read in fixed steps instead
/// ([`crate::proxy::upstream::MAX_RESPONSE_HEAD_BYTES`]).
pub const CONNECTION_BUF_BYTES: usize = MAX_HEAD_BYTES + 32 * 1024;

/// Most header lines in one head. hyper's own bound is 100; the screen stops at 98 so that the two
/// lines it adds to a refused head stay within it.
pub const MAX_HEADER_LINES: usize = 98;

#[cfg(test)]
#[path = "screen_tests.rs"]
mod tests;
