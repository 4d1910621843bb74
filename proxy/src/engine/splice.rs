//! The splice engine (Linux): `splice(2)` from the source socket into a pipe, then from
//! the pipe into the destination socket, so payload bytes never enter user space.
//!
//! Every call is non-blocking (`SPLICE_F_NONBLOCK` plus non-blocking sockets and pipe)
//! and driven by tokio readiness through `try_io`, which clears the socket's readiness
//! only when the call reports EAGAIN. EAGAIN from splice can mean "no data" or "pipe
//! full", so a direction tracks the bytes sitting in its pipe and fills the pipe only
//! when it is empty. An EAGAIN while filling therefore always means the source socket
//! has no data, and one while draining always means the destination socket is full.
//!
//! Each burst of data (from idle until the source has nothing left) opens with a plain
//! read of up to [`HEAD_BYTES`] into a pooled buffer. Small requests and responses are
//! thereby copied, which takes one system call fewer than splicing them. Only a burst
//! whose head read fills the buffer goes on through the pipe, so bulk transfers copy
//! 16 KiB per burst and splice the rest.
//!
//! Fallbacks, all to the copy engine for the rest of the direction:
//! - The startup probe finds splice missing (ENOSYS) or forbidden (EPERM, a seccomp
//!   filter): every connection copies.
//! - A splice from the socket fails with EINVAL, EOPNOTSUPP, ENOSYS or EPERM while the
//!   pipe is empty, so nothing is in flight: that direction copies; ENOSYS and EPERM
//!   also switch splice off for the process.
//! - No pipe can be created (EMFILE, ENFILE): that direction copies.
//!
//! Pipes come from a small process-wide pool, are raised to [`PIPE_SIZE`] when the
//! kernel allows, and go back to the pool only when empty.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::copy::CopyState;
use super::flow::{FlowEnd, Step, Tally};
use super::{Side, finish};

/// Pipe capacity requested with F_SETPIPE_SZ. A larger pipe moves more per splice call
/// on bulk transfers (1 MiB used about a quarter less proxy CPU per byte than 256 KiB
/// in the bulk benchmark on a 2-core loopback). Unprivileged processes may request up
/// to `/proc/sys/fs/pipe-max-size` (1 MiB by default); when the request fails the pipe
/// keeps the 64 KiB default.
///
/// NOTE: an unprivileged user whose pipes together pass `pipe-user-pages-soft` (64 MiB
/// by default) gets new pipes of one page, so about 64 busy directions at once is the
/// most this size suits without root or a raised limit.
pub(super) const PIPE_SIZE: usize = 1024 * 1024;

/// Empty pipes kept for reuse; more than this many are closed when returned.
const POOL_MAX: usize = 64;

/// Bytes the first read of each burst takes with a plain read. A request or response
/// smaller than this is copied in two system calls and leaves the socket's readiness
/// cleared, where splicing would take three (the last one failing with EAGAIN). A read
/// that fills it marks the burst as bulk, and the rest of the burst is spliced.
const HEAD_BYTES: usize = 16 * 1024;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Pipes lent out right now, for tests of the no-pipe-while-idle rule.
#[cfg(test)]
pub(super) static LEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PROBED: OnceLock<bool> = OnceLock::new();
static DISABLED: AtomicBool = AtomicBool::new(false);

/// Returns whether splice works here, probing once with a pipe-to-pipe splice.
pub(super) fn available() -> bool {
    !DISABLED.load(Ordering::Relaxed) && *PROBED.get_or_init(probe)
}

fn probe() -> bool {
    let result = (|| -> io::Result<usize> {
        let (from_read, from_write) = new_fds()?;
        let (_to_read, to_write) = new_fds()?;
        rustix::io::write(&from_write, b"x")?;
        Ok(rustix::pipe::splice(
            &from_read, None, &to_write, None, 1, FLAGS,
        )?)
    })();
    match result {
        Ok(1) => true,
        Ok(moved) => {
            tracing::warn!(
                moved,
                "Splice probe moved an unexpected byte count, using copy"
            );
            false
        }
        Err(error) => {
            tracing::warn!(%error, "Splice is unavailable, using copy");
            false
        }
    }
}

fn new_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
    )?)
}

/// Splice state of one direction: the borrowed pipe and its byte count, and the copy
/// state of the head read that opens each burst.
#[derive(Default)]
pub(super) struct SpliceState {
    pipe: Option<PipeLease>,
    head: CopyState,
    /// Set when the head read filled [`HEAD_BYTES`], so the rest of the burst splices.
    bulk: bool,
}

impl SpliceState {
    /// Writes what the head buffer or the pipe holds, then reads more, until both would
    /// block or the direction ends. The pipe is filled only when empty, which is the
    /// engine's backpressure and what makes each EAGAIN unambiguous.
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
            if self.head.has_pending() {
                if let Err(end) = ready!(self.head.poll_flush(cx, dst, dst_side, tally)) {
                    return Poll::Ready(Step::End(end));
                }
                continue;
            }
            if let Some(lease) = self.pipe.as_mut().filter(|lease| lease.in_pipe > 0) {
                if let Err(end) = ready!(drain(lease, cx, dst, dst_side, tally)) {
                    return Poll::Ready(Step::End(end));
                }
                continue;
            }

            let Poll::Ready(readiness) = src.poll_read_ready(cx) else {
                // Nothing is in flight: return the pipe and buffer while waiting for
                // data, so an idle direction keeps neither.
                self.pipe = None;
                self.head.release();
                self.bulk = false;
                return Poll::Pending;
            };
            if let Err(error) = readiness {
                return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
            }

            if !self.bulk {
                match self.head.read(src, HEAD_BYTES) {
                    Ok(0) => {
                        self.head.release();
                        return Poll::Ready(Step::End(finish(dst, dst_side)));
                    }
                    Ok(read) => {
                        tally.touch();
                        self.bulk = read == HEAD_BYTES;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => {
                        return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
                    }
                }
                continue;
            }

            let lease = match self.pipe {
                Some(ref mut lease) => lease,
                None => match PipeLease::take() {
                    Ok(lease) => self.pipe.insert(lease),
                    Err(error) => {
                        tracing::debug!(%error, "Failed to create a pipe, copying instead");
                        return Poll::Ready(Step::FallBack);
                    }
                },
            };
            let filled = src.try_io(Interest::READABLE, || {
                let pipe = lease.pipe();
                Ok(rustix::pipe::splice(
                    src,
                    None,
                    &pipe.write,
                    None,
                    pipe.capacity,
                    FLAGS,
                )?)
            });
            match filled {
                Ok(0) => {
                    self.pipe = None;
                    return Poll::Ready(Step::End(finish(dst, dst_side)));
                }
                Ok(filled) => {
                    lease.in_pipe = filled;
                    tally.touch();
                }
                // The burst is over; the next one starts with a head read again.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.bulk = false,
                // The pipe is empty, so falling back loses nothing.
                Err(error) if is_unsupported(&error) => {
                    self.pipe = None;
                    return Poll::Ready(Step::FallBack);
                }
                Err(error) => {
                    return Poll::Ready(Step::End(FlowEnd::read_failure(src_side, error)));
                }
            }
        }
    }
}

/// Splices everything in the pipe into `dst`.
fn drain(
    lease: &mut PipeLease,
    cx: &mut Context<'_>,
    dst: &TcpStream,
    dst_side: Side,
    tally: &mut Tally<'_>,
) -> Poll<Result<(), FlowEnd>> {
    while lease.in_pipe > 0 {
        if let Err(error) = ready!(dst.poll_write_ready(cx)) {
            return Poll::Ready(Err(FlowEnd::write_failure(dst_side, error)));
        }
        let moved = dst.try_io(Interest::WRITABLE, || {
            let pipe = lease.pipe();
            Ok(rustix::pipe::splice(
                &pipe.read,
                None,
                dst,
                None,
                lease.in_pipe,
                FLAGS,
            )?)
        });
        match moved {
            // Splicing out of a non-empty pipe whose write end is open never returns 0;
            // stop instead of spinning if a kernel ever does.
            Ok(0) => {
                let error = io::ErrorKind::WriteZero.into();
                return Poll::Ready(Err(FlowEnd::write_failure(dst_side, error)));
            }
            Ok(moved) => {
                lease.in_pipe -= moved;
                tally.add(moved);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Poll::Ready(Err(FlowEnd::write_failure(dst_side, error))),
        }
    }
    Poll::Ready(Ok(()))
}

/// Returns whether a splice error means "this cannot splice" rather than a socket
/// failure. ENOSYS (no splice in this kernel) and EPERM (a seccomp filter) switch
/// splice off for the whole process; EINVAL and EOPNOTSUPP (this descriptor pair
/// cannot splice) only affect this direction.
fn is_unsupported(error: &io::Error) -> bool {
    let errno = error.raw_os_error().map(Errno::from_raw_os_error);
    match errno {
        Some(Errno::NOSYS | Errno::PERM) => {
            if !DISABLED.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "Splice failed on a socket, using copy from now on");
            }
            true
        }
        Some(Errno::INVAL | Errno::OPNOTSUPP) => true,
        _ => false,
    }
}

/// A pipe and its raised capacity.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = new_fds()?;
        // Keep the default capacity when the kernel rejects the larger size.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// A pipe borrowed from the pool, with the count of bytes sitting in it. It goes back
/// to the pool when dropped empty and is closed when dropped with data in it.
struct PipeLease {
    pipe: Option<Pipe>,
    in_pipe: usize,
}

impl PipeLease {
    fn take() -> io::Result<Self> {
        let pooled = POOL
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop();
        let pipe = match pooled {
            Some(pipe) => pipe,
            None => Pipe::new()?,
        };
        #[cfg(test)]
        LEASED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Self {
            pipe: Some(pipe),
            in_pipe: 0,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("pipe missing from a live lease")
    }
}

impl Drop for PipeLease {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else {
            return;
        };
        #[cfg(test)]
        LEASED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if self.in_pipe > 0 {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|poison| poison.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    }
}
