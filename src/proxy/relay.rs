//! Relaying bytes both ways between a client and a server (TCP mode sessions, upgraded
//! connections), with HAProxy's idle timeouts and half-close.
//!
//! Each direction has one buffer of up to [`RELAY_BUFFER`] bytes, allocated when a read is
//! made and never zeroed (reads go into its spare capacity). It is held only while bytes move:
//! once everything read has been written and the reader has nothing more, it goes back to the
//! allocator, so an idle session holds no buffer (HAProxy releases empty buffers the same way).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::proxy::timer::LazyTimer;

/// Byte counts of a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
}

/// Buffer per direction of a relay while bytes move: large enough that a bulk transfer moves in
/// few system calls. An idle direction holds none.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// How a relay ends once both directions have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every side that sent its EOF is shut down for writing (a TLS stream sends its
    /// close_notify then).
    ShutdownBoth,
    /// The side whose direction ends last is not shut down: it is closed when the relay drops
    /// it, which sends the same FIN. For plain TCP sockets: one system call fewer per session.
    CloseLast,
}

/// Relays bytes between `client` and `server` until both directions are closed. `first` is
/// sent to the server before anything the client sends (a PROXY protocol header, bytes
/// already read from the client); it is not counted. An EOF on one side is passed on as a
/// half-close (shutdown of the other side's write half) while the other direction goes on.
/// `client_idle` / `server_idle` are HAProxy's `timeout client` / `timeout server`: the relay
/// fails with `TimedOut` when a side that is expected to send stays silent that long while
/// nothing moves in the other direction either. The bytes read from each side are counted
/// whether the relay ends well or not.
pub async fn relay<C, S>(
    client: C,
    server: S,
    first: Vec<u8>,
    (client_idle, server_idle): (Duration, Duration),
    ending: Ending,
) -> (Relayed, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let result = Relay {
        client: Idle::new(client, client_idle, &activity, &activity.up),
        server: Idle::new(server, server_idle, &activity, &activity.down),
        up: Pipe::new(BytesMut::from(&first[..])),
        down: Pipe::new(BytesMut::new()),
        ending,
    }
    .await;
    let relayed = Relayed {
        up: activity.up.load(Ordering::Relaxed),
        down: activity.down.load(Ordering::Relaxed),
    };
    (relayed, result)
}

/// Both directions of a relay.
struct Relay<'a, C, S> {
    client: Idle<'a, C>,
    server: Idle<'a, S>,
    /// Client to server.
    up: Pipe,
    /// Server to client.
    down: Pipe,
    ending: Ending,
}

impl<C, S> Future for Relay<'_, C, S>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let close_last = this.ending == Ending::CloseLast;
        let up = this.up.poll_copy(
            cx,
            &mut this.client,
            &mut this.server,
            close_last && this.down.done,
        )?;
        let down = this.down.poll_copy(
            cx,
            &mut this.server,
            &mut this.client,
            close_last && this.up.done,
        )?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

/// One direction of a relay: bytes read from one side wait in `buf` until written to the
/// other.
struct Pipe {
    buf: BytesMut,
    /// The reading side sent its EOF.
    eof: bool,
    /// Bytes were written since the writer was last flushed.
    unflushed: bool,
    /// EOF read, everything written and flushed, the writer shut down (or left to close).
    done: bool,
}

impl Pipe {
    fn new(buf: BytesMut) -> Self {
        Self {
            buf,
            eof: false,
            unflushed: false,
            done: false,
        }
    }

    /// Moves bytes from `reader` to `writer` until the reader's EOF has been passed on
    /// (`Ready`), or until neither can go on (`Pending`). With `close` the writer is not shut
    /// down at the end, because the relay ends with this direction and closes it.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        close: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.buf.is_empty() {
                match Pin::new(&mut *writer).poll_write(cx, &self.buf)? {
                    Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(n) => {
                        self.buf.advance(n);
                        self.unflushed = true;
                    }
                    Poll::Pending => {
                        // Read ahead into the room after the waiting bytes (never more: the
                        // buffer does not grow), so that the next write carries more. The
                        // writer's readiness wakes this direction again.
                        if !self.eof && self.buf.capacity() > self.buf.len() {
                            match poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf)? {
                                Poll::Ready(0) => self.eof = true,
                                Poll::Ready(_) | Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.unflushed {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                if !close {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                }
                self.done = true;
                self.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            // Empty: the whole buffer is free again.
            self.buf.clear();
            self.buf.reserve(RELAY_BUFFER);
            match poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf)? {
                Poll::Ready(0) => self.eof = true,
                Poll::Ready(_) => {}
                Poll::Pending => {
                    // Nothing waits in this direction: the buffer goes back to the allocator
                    // until the next bytes come, so that an idle session holds none (as
                    // HAProxy releases its empty buffers).
                    self.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
    }
}

/// When bytes last moved in either direction of a relay, and how many were read each way.
struct Activity {
    base: Instant,
    nanos: AtomicU64,
    /// Read from the client.
    up: AtomicU64,
    /// Read from the server.
    down: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// One side of a relay: reads time out after `idle` without traffic in either direction;
/// bytes read are added to `read`.
struct Idle<'a, T> {
    io: T,
    idle: Duration,
    activity: &'a Activity,
    read: &'a AtomicU64,
    timer: LazyTimer,
}

impl<'a, T> Idle<'a, T> {
    fn new(io: T, idle: Duration, activity: &'a Activity, read: &'a AtomicU64) -> Self {
        Self {
            io,
            idle,
            activity,
            read,
            timer: LazyTimer::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.activity.touch();
                let n = (buf.filled().len() - before) as u64;
                this.read.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = this.activity.last() + this.idle;
                if this.timer.poll_expired(deadline, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(_))) {
            this.activity.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;
    use crate::proxy::test_io::Counted;

    #[tokio::test]
    async fn relay_passes_half_close_and_counts_bytes() {
        let (client, mut client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
        let relay = tokio::spawn(relay(
            client,
            server,
            Vec::new(),
            (Duration::from_secs(5), Duration::from_secs(5)),
            Ending::ShutdownBoth,
        ));
        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "the client's EOF reached the server");
        // The other direction still works after the half-close.
        server_peer.write_all(b"pong!").await.unwrap();
        drop(server_peer);
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let (relayed, result) = relay.await.unwrap();
        result.unwrap();
        assert_eq!(relayed, Relayed { up: 4, down: 5 });
    }

    #[tokio::test(start_paused = true)]
    async fn silent_sides_time_out() {
        let (client, _client_peer) = duplex(64);
        let (server, _server_peer) = duplex(64);
        let start = Instant::now();
        let (_, result) = relay(
            client,
            server,
            Vec::new(),
            (Duration::from_secs(3), Duration::from_secs(5)),
            Ending::CloseLast,
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "the shorter idle timeout"
        );
    }

    /// Bytes to send before the client's go first, and are not counted as the client's.
    #[tokio::test]
    async fn first_bytes_go_before_the_clients() {
        let (client, mut client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
        let five = Duration::from_secs(5);
        let relay = tokio::spawn(relay(
            client,
            server,
            b"HEADER ".to_vec(),
            (five, five),
            Ending::CloseLast,
        ));
        client_peer.write_all(b"abc").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HEADER abc");
        drop(server_peer);
        let (relayed, result) = relay.await.unwrap();
        result.unwrap();
        assert_eq!(relayed, Relayed { up: 3, down: 0 });
    }

    /// The client ends first, then the server: the server is shut down for writing when the
    /// client's EOF comes; the client, whose direction ends last, is shut down only with
    /// `ShutdownBoth`, and with `CloseLast` gets its EOF from being closed.
    #[tokio::test]
    async fn the_side_that_ends_last_is_closed_or_shut_down() {
        for (ending, client_shutdowns) in [(Ending::CloseLast, 0), (Ending::ShutdownBoth, 1)] {
            let (client, mut client_peer) = duplex(64);
            let (server, mut server_peer) = duplex(64);
            let (client, on_client) = Counted::new(client);
            let (server, on_server) = Counted::new(server);
            let five = Duration::from_secs(5);
            let relay = tokio::spawn(relay(client, server, Vec::new(), (five, five), ending));
            client_peer.write_all(b"ping").await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            server_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping");
            server_peer.write_all(b"pong").await.unwrap();
            drop(server_peer);
            let mut back = Vec::new();
            client_peer.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"pong", "{ending:?}");
            let (relayed, result) = relay.await.unwrap();
            result.unwrap();
            assert_eq!(relayed, Relayed { up: 4, down: 4 });
            assert_eq!(on_server.shutdowns(), 1, "{ending:?}");
            assert_eq!(on_client.shutdowns(), client_shutdowns, "{ending:?}");
        }
    }

    /// More than a buffer's worth each way through sides that take a few bytes at a time
    /// (partial writes, reads ahead while a write waits): every byte arrives, in order.
    #[tokio::test]
    async fn a_large_transfer_through_slow_sides_arrives_whole() {
        let len = 3 * RELAY_BUFFER + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (client, client_peer) = duplex(1000);
        let (server, server_peer) = duplex(777);
        let five = Duration::from_secs(5);
        let relay = tokio::spawn(relay(
            client,
            server,
            Vec::new(),
            (five, five),
            Ending::CloseLast,
        ));
        // Each peer sends the data and reads what the other sent, both at once.
        let exchange = |mut peer: tokio::io::DuplexStream, data: Vec<u8>| async move {
            let (mut rd, mut wr) = tokio::io::split(&mut peer);
            let send = async {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let receive = rd.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, receive);
            n.unwrap();
            got
        };
        let (from_server, from_client) = tokio::join!(
            exchange(client_peer, data.clone()),
            exchange(server_peer, data.clone())
        );
        assert!(from_server == data, "server to client");
        assert!(from_client == data, "client to server");
        let (relayed, result) = relay.await.unwrap();
        result.unwrap();
        assert_eq!(
            relayed,
            Relayed {
                up: len as u64,
                down: len as u64
            }
        );
    }

    /// Always has bytes to read.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            buf.put_slice(&vec![b'x'; buf.remaining()]);
            Poll::Ready(Ok(()))
        }
    }

    /// Takes `room` bytes, then waits.
    struct Clogged {
        room: usize,
    }

    impl AsyncWrite for Clogged {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A writer that takes part of a buffer and then waits, in front of a reader that always
    /// has more: the read ahead fills only the room after the waiting bytes, and the buffer
    /// never holds more than [`RELAY_BUFFER`].
    #[test]
    fn a_waiting_writer_holds_one_buffer_at_most() {
        let mut pipe = Pipe::new(BytesMut::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut writer = Clogged { room: 1000 };
        for _ in 0..3 {
            let poll = pipe.poll_copy(&mut cx, &mut Endless, &mut writer, false);
            assert!(poll.is_pending());
            assert_eq!(pipe.buf.len(), RELAY_BUFFER - 1000);
        }
    }

    /// Gives its chunks one per read, then has nothing more (waits), or ends with `eof`.
    struct Trickle {
        chunks: std::collections::VecDeque<&'static [u8]>,
        eof: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.chunks.pop_front() {
                Some(chunk) => buf.put_slice(chunk),
                None if self.eof => {}
                None => return Poll::Pending,
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Once what a side sent has been passed on and it has nothing more, its direction holds
    /// no buffer (an idle session costs no relay memory); the next bytes get one again, and a
    /// finished direction keeps none.
    #[test]
    fn an_idle_direction_holds_no_buffer() {
        let mut pipe = Pipe::new(BytesMut::new());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut reader = Trickle {
            chunks: [&b"hello"[..], b" world"].into(),
            eof: false,
        };
        let mut writer = Vec::new();
        assert!(
            pipe.poll_copy(&mut cx, &mut reader, &mut writer, false)
                .is_pending()
        );
        assert_eq!(writer, b"hello world");
        assert_eq!(pipe.buf.capacity(), 0);

        reader.chunks.push_back(b"!");
        reader.eof = true;
        assert!(
            pipe.poll_copy(&mut cx, &mut reader, &mut writer, false)
                .is_ready()
        );
        assert_eq!(writer, b"hello world!");
        assert!(pipe.done);
        assert_eq!(pipe.buf.capacity(), 0);
    }
}
