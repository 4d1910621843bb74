//! The copy engine: read into a pooled buffer, write it all out, repeat.

use std::io;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

use super::buffers::BufferLease;
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
            if self.start < self.end {
                if let Err(error) = ready!(dst.poll_write_ready(cx)) {
                    return Poll::Ready(Step::End(FlowEnd::write_failure(dst_side, error)));
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
                    Err(error) => {
                        return Poll::Ready(Step::End(FlowEnd::write_failure(dst_side, error)));
                    }
                }
                continue;
            }

            if let Err(error) = ready!(src.poll_read_ready(cx)) {
                return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
            }
            let buffer = self.buffer.get_or_insert_with(BufferLease::take);
            match src.try_read(buffer) {
                Ok(0) => {
                    self.buffer = None;
                    return Poll::Ready(Step::End(finish(dst, dst_side)));
                }
                Ok(read) => {
                    self.start = 0;
                    self.end = read;
                    tally.touch();
                }
                // Nothing to read: return the buffer, so an idle direction keeps none.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.buffer = None,
                Err(error) => {
                    return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
                }
            }
        }
    }
}
