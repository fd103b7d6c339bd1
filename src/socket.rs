//! Plain TCP client connections that send blob hits with `sendfile(2)`.
//! A committed blob's body is made of mapped windows of its file
//! (`store::mapped`); when hyper writes bytes that lie in a live window,
//! [`ZeroCopyStream`] asks the kernel to send them from the file instead of
//! copying them from memory: the bytes are the same (a committed file never
//! changes), one copy and the page-table walk fewer. Everything else (headers,
//! manifests, small blobs, fills) is written as it would be. Headers that
//! precede a window are sent with `MSG_MORE`, so they leave in the same
//! segment as the body's start, as nginx's `tcp_nopush` does.
//!
//! It never changes what is sent, only how: bytes are written in order, each
//! call writes from the start of what it was given, and a byte outside a live
//! window is never sent from a file.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::store::Mappings;
use crate::store::mapped::Located;

/// Most bytes one `sendfile` call is asked for: a socket buffer's worth at
/// most is taken anyway.
const MAX_SENDFILE: usize = 1024 * 1024;

/// A listener whose connections are [`ZeroCopyStream`]s.
#[derive(Debug)]
pub struct ZeroCopyListener<L> {
    inner: L,
    mappings: Arc<Mappings>,
}

impl<L> ZeroCopyListener<L> {
    pub fn new(inner: L, mappings: Arc<Mappings>) -> Self {
        Self { inner, mappings }
    }
}

impl<L> axum::serve::Listener for ZeroCopyListener<L>
where
    L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = ZeroCopyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = self.inner.accept().await;
        let stream = ZeroCopyStream {
            tcp,
            mappings: Arc::clone(&self.mappings),
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that sends bytes of mapped blob windows from their file.
#[derive(Debug)]
pub struct ZeroCopyStream {
    tcp: TcpStream,
    mappings: Arc<Mappings>,
}

impl ZeroCopyStream {
    /// Writes the leading buffers that lie in no window (all of them up to
    /// the first that does), flagged `MSG_MORE` when a window follows.
    fn poll_write_plain(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        more: bool,
    ) -> Poll<io::Result<usize>> {
        if !more {
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        }
        let flags = rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL;
        self.poll_io(cx, || {
            rustix::net::sendmsg(
                &self.tcp,
                bufs,
                &mut rustix::net::SendAncillaryBuffer::default(),
                flags,
            )
            .map_err(io::Error::from)
        })
    }

    /// Sends bytes of a window from its file.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        located: &Located,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let count = len.min(located.len).min(MAX_SENDFILE);
        let sent = ready!(self.poll_io(cx, || {
            let mut offset = located.offset;
            rustix::fs::sendfile(
                self.tcp.as_fd(),
                located.file.as_fd(),
                Some(&mut offset),
                count,
            )
            .map_err(io::Error::from)
        }))?;
        self.mappings.sent_from_file(sent);
        Poll::Ready(Ok(sent))
    }

    /// Runs a non-blocking write on the socket once it is writable, waiting
    /// again if the kernel's buffer filled up meanwhile.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(Interest::WRITABLE, &mut write) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(first) = bufs.iter().position(|buf| !buf.is_empty()) else {
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        };
        let bufs = &bufs[first..];
        if let Some(located) = this.mappings.locate(bufs[0].as_ptr()) {
            return this.poll_sendfile(cx, &located, bufs[0].len());
        }
        // Plain bytes up to the next window, if any: they go first, alone.
        let window = bufs
            .iter()
            .skip(1)
            .position(|buf| !buf.is_empty() && this.mappings.locate(buf.as_ptr()).is_some())
            .map(|at| at + 1);
        match window {
            Some(at) => this.poll_write_plain(cx, &bufs[..at], true),
            None => this.poll_write_plain(cx, bufs, false),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then queues body chunks as they are instead of copying them
        // into its own buffer: the chunk written is the window itself.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
