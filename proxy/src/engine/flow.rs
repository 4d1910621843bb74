//! One direction of a connection: its engine state, its byte count and how it ended.

use std::io;
use std::task::{Context, Poll};

use metrics::Counter;
use tokio::net::TcpStream;

use super::copy::CopyState;
#[cfg(target_os = "linux")]
use super::splice::SpliceState;
use super::{Engine, Side};

/// Bytes a direction moves before it adds them to the shared byte counter.
const COUNTER_FLUSH_BYTES: u64 = 1 << 20;

/// The way one direction ended.
#[derive(Debug)]
pub(super) enum FlowEnd {
    /// The source sent a FIN and the destination's write side was shut down.
    Finished,
    /// `Side` sent a reset.
    Reset(Side),
    /// A socket error other than a reset on `Side`.
    Failed(Side, io::Error),
}

impl FlowEnd {
    /// Classifies an error from reading the source at `side`.
    pub(super) fn read_failure(side: Side, error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset => FlowEnd::Reset(side),
            _ => FlowEnd::Failed(side, error),
        }
    }

    /// Classifies an error from writing the destination at `side`. EPIPE means the
    /// peer is gone, which for a TCP socket means it reset or closed after a reset.
    pub(super) fn write_failure(side: Side, error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => FlowEnd::Reset(side),
            _ => FlowEnd::Failed(side, error),
        }
    }
}

/// Result of an engine's poll: the end of the direction, or a request to carry on with
/// the copy engine, made only while no byte is in flight.
pub(super) enum Step {
    End(FlowEnd),
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    FallBack,
}

/// The engine-specific state of one direction.
enum Carrier {
    Copy(CopyState),
    #[cfg(target_os = "linux")]
    Splice(SpliceState),
}

/// One direction of a connection, from `src_side` to the other side.
pub(super) struct Flow<'a> {
    carrier: Carrier,
    src_side: Side,
    finished: bool,
    tally: Tally<'a>,
}

impl<'a> Flow<'a> {
    /// Creates a direction that reads from `src_side` and reports bytes to `counter`.
    pub(super) fn new(engine: Engine, src_side: Side, counter: &'a Counter) -> Self {
        let carrier = match engine {
            #[cfg(target_os = "linux")]
            Engine::Splice if super::splice::available() => Carrier::Splice(SpliceState::default()),
            Engine::Splice | Engine::Copy => Carrier::Copy(CopyState::default()),
        };
        Self {
            carrier,
            src_side,
            finished: false,
            tally: Tally {
                total: 0,
                unflushed: 0,
                active: false,
                counter,
            },
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Returns the bytes written to the destination so far.
    pub(super) fn total(&self) -> u64 {
        self.tally.total
    }

    /// Moves bytes from `src` to `dst` until both would block or the direction ends,
    /// and sets `moved` when any byte was read or written.
    pub(super) fn poll_flow(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut bool,
    ) -> Poll<FlowEnd> {
        let step = loop {
            let step = match &mut self.carrier {
                Carrier::Copy(state) => state.poll(cx, src, dst, self.src_side, &mut self.tally),
                #[cfg(target_os = "linux")]
                Carrier::Splice(state) => state.poll(cx, src, dst, self.src_side, &mut self.tally),
            };
            match step {
                Poll::Ready(Step::FallBack) => self.carrier = Carrier::Copy(CopyState::default()),
                Poll::Ready(Step::End(end)) => break Poll::Ready(end),
                Poll::Pending => break Poll::Pending,
            }
        };

        *moved |= std::mem::take(&mut self.tally.active);
        if step.is_ready() {
            self.finished = true;
        }
        step
    }
}

/// Counts one direction's bytes: exactly in `total`, and in chunks into the shared
/// counter so the data path does not touch it on every system call.
pub(super) struct Tally<'a> {
    total: u64,
    unflushed: u64,
    /// Set when a byte was read or written since the last poll, for the idle timer.
    active: bool,
    counter: &'a Counter,
}

impl Tally<'_> {
    /// Records that bytes were read into a buffer or pipe.
    pub(super) fn touch(&mut self) {
        self.active = true;
    }

    /// Records bytes written to the destination.
    pub(super) fn add(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.active = true;
        self.total += bytes;
        self.unflushed += bytes;
        if self.unflushed >= COUNTER_FLUSH_BYTES {
            self.counter.increment(self.unflushed);
            self.unflushed = 0;
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.unflushed > 0 {
            self.counter.increment(self.unflushed);
        }
    }
}
