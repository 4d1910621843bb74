//! The copy engine: read into a pooled buffer, write it all out, repeat.

use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::buffers::{BUFFER_SIZE, BufferLease};
use super::flow::{FlowEnd, Step, Tally};
use super::{Side, finish};

/// Copy state of one direction: the borrowed buffer and the part of it still to write.
#[derive(Default)]
pub(super) struct CopyState {
    buffer: Option<BufferLease>,
    start: usize,
    end: usize,
}

impl CopyState {
    /// Writes what the buffer holds, then reads more, until both would block or the
    /// direction ends. A direction reads again only after the destination took all it
    /// read before, which is the engine's backpressure.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        src_side: Side,
        tally: &mut Tally<'_>,
    ) -> Poll<Step> {
        let dst_side = src_side.other();
        loop {
            if let Err(end) = ready!(self.poll_flush(cx, dst, dst_side, tally)) {
                return Poll::Ready(Step::End(end));
            }

            let Poll::Ready(readiness) = src.poll_read_ready(cx) else {
                // Everything read was written: return the buffer while waiting for data,
                // so an idle direction keeps none.
                self.release();
                return Poll::Pending;
            };
            if let Err(error) = readiness {
                return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
            }
            match self.read(src, BUFFER_SIZE) {
                Ok(0) => {
                    self.release();
                    return Poll::Ready(Step::End(finish(dst, dst_side)));
                }
                Ok(_) => tally.touch(),
                // Nothing to read; the buffer goes back on the next poll above.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
                }
            }
        }
    }

    /// Returns whether bytes read are still waiting to be written.
    pub(super) fn has_pending(&self) -> bool {
        self.start < self.end
    }

    /// Writes the pending bytes to `dst` until none remain.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        dst_side: Side,
        tally: &mut Tally<'_>,
    ) -> Poll<Result<(), FlowEnd>> {
        while self.has_pending() {
            if let Err(error) = ready!(dst.poll_write_ready(cx)) {
                return Poll::Ready(Err(FlowEnd::write_failure(dst_side, error)));
            }
            let buffer = self
                .buffer
                .as_deref()
                .expect("pending bytes sit in a buffer");
            match dst.try_write(&buffer[self.start..self.end]) {
                Ok(written) => {
                    self.start += written;
                    tally.add(written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(FlowEnd::write_failure(dst_side, error))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads up to `limit` bytes from `src` into the buffer, taking one from the pool
    /// if needed; the bytes read become pending. Call only with nothing pending.
    pub(super) fn read(&mut self, src: &TcpStream, limit: usize) -> io::Result<usize> {
        debug_assert!(
            !self.has_pending(),
            "a read would overwrite unwritten bytes"
        );
        let buffer = self.buffer.get_or_insert_with(BufferLease::take);
        let limit = limit.min(buffer.len());
        let read = read_clearing_readiness(src, &mut buffer[..limit])?;
        self.start = 0;
        self.end = read;
        Ok(read)
    }

    /// Returns the buffer to the pool; nothing may be pending.
    pub(super) fn release(&mut self) {
        debug_assert!(
            !self.has_pending(),
            "releasing a buffer with unwritten bytes"
        );
        self.buffer = None;
    }
}

/// Reads from `src` like `try_read`, but also clears its read readiness after a short
/// read, as tokio's own `poll_read` does.
///
/// A TCP read returns fewer bytes than requested only when the receive queue is empty
/// or a FIN follows the data. In the first case the next read would fail with EAGAIN,
/// so clearing readiness now saves that system call on every request of a
/// request/response exchange. A FIN stays visible because tokio never clears its
/// read-closed state, and data that arrives after the read raises a new readiness
/// event, which is kept because tokio clears only the event it handed out before.
fn read_clearing_readiness(src: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let mut short_read = 0;
    let result = src.try_io(Interest::READABLE, || {
        let read = rustix::io::read(src, &mut *buffer)?;
        if read > 0 && read < buffer.len() {
            short_read = read;
            // A WouldBlock result makes `try_io` clear the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match result {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock && short_read > 0 => Ok(short_read),
        other => other,
    }
}
