//! The copy engine: read into a pooled buffer, write it all out, repeat.

use std::io;

use tokio::net::TcpStream;

use super::buffers::BufferLease;
use super::{Activity, Direction, DirectionEnd};

/// Runs one direction until its source sends a FIN or a side fails.
///
/// # Cancel safety
/// Not cancel safe: bytes read but not yet written are lost when the future is dropped.
pub(super) async fn run(direction: Direction<'_>) -> DirectionEnd {
    let Direction {
        src,
        dst,
        src_side,
        mut tally,
        activity,
    } = direction;
    let dst_side = src_side.other();
    let mut buffer: Option<BufferLease> = None;

    loop {
        if let Err(error) = src.readable().await {
            return DirectionEnd::read_failure(src_side, error);
        }

        let chunk = buffer.get_or_insert_with(BufferLease::take);
        let read = match src.try_read(chunk) {
            Ok(0) => return super::finish(dst, dst_side),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // Nothing to read: give the buffer back so an idle direction holds none.
                buffer = None;
                continue;
            }
            Err(error) => return DirectionEnd::read_failure(src_side, error),
        };
        activity.touch();

        if let Err(error) = write_all(dst, &chunk[..read], activity).await {
            return DirectionEnd::write_failure(dst_side, error);
        }
        tally.add(read);
    }
}

/// Writes all of `bytes` to `dst`, waiting for room as needed. A direction reads
/// nothing new until this returns, which is the engine's backpressure.
async fn write_all(dst: &TcpStream, mut bytes: &[u8], activity: &Activity) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(written) => {
                bytes = &bytes[written..];
                activity.touch();
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
