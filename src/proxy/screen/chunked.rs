//! Chunked request bodies: the byte-by-byte framing of chunk sizes, extensions, data and trailers
//! ([`step_chunk`]), tracked so that the next pipelined head is found, and the [`FramingError`] of a
//! body whose framing is broken.

/// A request body whose chunked framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked request body")]
pub struct FramingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Spaces after the size, before `;` or CR.
    SizeWs {
        size: u64,
    },
    /// A chunk extension, up to CR.
    Ext {
        size: u64,
    },
    /// CR of the size line seen.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Start of a trailer line (an empty one ends the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// One framing byte of a chunked body; `None` when the body ended.
pub(super) fn step_chunk(chunk: Chunk, b: u8) -> Result<Option<Chunk>, FramingError> {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    Ok(Some(match chunk {
        Chunk::Size { size, digits } => match (hex(b), b) {
            (Some(d), _) if digits < 16 => Chunk::Size {
                size: size * 16 + d,
                digits: digits + 1,
            },
            (Some(_), _) => return Err(FramingError),
            (None, _) if digits == 0 => return Err(FramingError),
            (None, b' ' | b'\t') => Chunk::SizeWs { size },
            (None, b';') => Chunk::Ext { size },
            (None, b'\r') => Chunk::SizeLf { size },
            _ => return Err(FramingError),
        },
        Chunk::SizeWs { size } => match b {
            b' ' | b'\t' => Chunk::SizeWs { size },
            b';' => Chunk::Ext { size },
            b'\r' => Chunk::SizeLf { size },
            _ => return Err(FramingError),
        },
        Chunk::Ext { size } => match b {
            b'\r' => Chunk::SizeLf { size },
            b'\n' => return Err(FramingError),
            _ => Chunk::Ext { size },
        },
        Chunk::SizeLf { size } => match (b, size) {
            (b'\n', 0) => Chunk::TrailerStart,
            (b'\n', n) => Chunk::Data(n),
            _ => return Err(FramingError),
        },
        Chunk::Data(_) => return Err(FramingError),
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return Err(FramingError),
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(FramingError),
        },
        Chunk::TrailerStart => match b {
            b'\r' => Chunk::EndLf,
            b'\n' => return Err(FramingError),
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLine => match b {
            b'\r' => Chunk::TrailerLf,
            b'\n' => return Err(FramingError),
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLf => match b {
            b'\n' => Chunk::TrailerStart,
            _ => return Err(FramingError),
        },
        Chunk::EndLf => match b {
            b'\n' => return Ok(None),
            _ => return Err(FramingError),
        },
    }))
}
