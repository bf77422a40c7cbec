//! Why the screen refuses a request head: the [`Refusal`] kinds, the token each carries in the
//! marker header, the message the client is told and the status (400, or 431 for the size bounds).

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` and `Transfer-Encoding` in one request (RFC 9112 §6.1: a smuggling sign).
    LengthAndChunked,
    /// More than one `Content-Length` field, even with equal values.
    DuplicateLength,
    /// A `Content-Length` that is not a plain decimal number.
    BadLength,
    /// A `Transfer-Encoding` other than exactly `chunked` (`chunked, identity`, `xchunked`, ...).
    BadTransferEncoding,
    /// More than one `Transfer-Encoding` field.
    DuplicateTransferEncoding,
    /// A line ended by LF without CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A header line without a colon, with an empty name, or with spaces or tabs in the name.
    BadHeaderName,
    /// A header line continued on the next line (obsolete folding).
    ObsFold,
    /// A head longer than [`MAX_HEAD_BYTES`](super::MAX_HEAD_BYTES) (431).
    TooLarge,
    /// More than [`MAX_HEADER_LINES`](super::MAX_HEADER_LINES) header fields (431).
    TooManyFields,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::LengthAndChunked,
        Refusal::DuplicateLength,
        Refusal::BadLength,
        Refusal::BadTransferEncoding,
        Refusal::DuplicateTransferEncoding,
        Refusal::BareLf,
        Refusal::BareCr,
        Refusal::BadHeaderName,
        Refusal::ObsFold,
        Refusal::TooLarge,
        Refusal::TooManyFields,
    ];

    /// The token carried in the marker header.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => "length-and-chunked",
            Refusal::DuplicateLength => "duplicate-length",
            Refusal::BadLength => "bad-length",
            Refusal::BadTransferEncoding => "bad-transfer-encoding",
            Refusal::DuplicateTransferEncoding => "duplicate-transfer-encoding",
            Refusal::BareLf => "bare-lf",
            Refusal::BareCr => "bare-cr",
            Refusal::BadHeaderName => "bad-header-name",
            Refusal::ObsFold => "obs-fold",
            Refusal::TooLarge => "too-large",
            Refusal::TooManyFields => "too-many-fields",
        }
    }

    /// The refusal a marker header names; an unknown token (a client forging the header) is
    /// still a refusal.
    pub fn from_code(code: &[u8]) -> Refusal {
        Refusal::ALL
            .into_iter()
            .find(|r| r.code().as_bytes() == code)
            .unwrap_or(Refusal::BadHeaderName)
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => {
                "request has both Content-Length and Transfer-Encoding (refused: ambiguous framing)"
            }
            Refusal::DuplicateLength => "request has more than one Content-Length",
            Refusal::BadLength => "request has an invalid Content-Length",
            Refusal::BadTransferEncoding => "request Transfer-Encoding must be exactly \"chunked\"",
            Refusal::DuplicateTransferEncoding => "request has more than one Transfer-Encoding",
            Refusal::BareLf => "request head has a line ending without CR",
            Refusal::BareCr => "request head has a CR without LF",
            Refusal::BadHeaderName => "request has an invalid header line or name",
            Refusal::ObsFold => "request has a folded header line",
            Refusal::TooLarge => "request header fields are larger than 65536 bytes",
            Refusal::TooManyFields => "request has more than 98 header fields",
        }
    }

    /// 431 for the size bounds, else 400.
    pub fn too_large(self) -> bool {
        matches!(self, Refusal::TooLarge | Refusal::TooManyFields)
    }
}
