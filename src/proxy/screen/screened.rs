//! The I/O side of the screen: [`Screened`] wraps a client connection, reads through a
//! [`Screen`] into hyper's buffer (body bytes of known length straight in) and passes writes
//! straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Screen;

/// A client connection read through a [`Screen`]; writes pass straight through.
#[derive(Debug)]
pub struct Screened<T> {
    inner: T,
    screen: Screen,
    /// Screened bytes not yet taken by hyper, from `pos`.
    out: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// `out` keeps at most this much capacity between reads (it holds a head or one read's bytes).
const OUT_KEEP: usize = 16 * 1024;

impl<T> Screened<T> {
    /// Wraps a client connection.
    pub fn new(inner: T) -> Self {
        Screened {
            inner,
            screen: Screen::default(),
            out: Vec::new(),
            pos: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Screened<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                    if this.out.capacity() > OUT_KEEP {
                        this.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.screen.refused() {
                // The marker head is out; hyper answers it and closes. Nothing more is read.
                return Poll::Pending;
            }
            if this.screen.passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Body bytes of known length go straight to hyper when they cannot run past the body.
            if this.screen.pass_budget() >= buf.remaining() as u64 {
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                }
                this.screen.passed(n as u64);
                return Poll::Ready(Ok(()));
            }
            // Read into hyper's buffer, screen what came, and put back what may pass now (the rest
            // waits in `out`, or was held back): no buffer of our own per connection.
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                this.eof = true;
                continue;
            }
            let screened = this.screen.feed(&buf.filled()[before..], &mut this.out);
            buf.set_filled(before);
            screened.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Screened<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
