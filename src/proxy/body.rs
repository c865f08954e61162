//! The body of a response to the client: a server's response or a local answer, carrying the
//! request's [`Finish`] hook so the access-log line is written when the response has been fully
//! sent (or abandoned), with the bytes actually sent. Over HTTP/2 it also tells the connection
//! when it waits for the client to take its data ([`StreamProgress`]); over HTTP/1 a large
//! response holds its data back while the client takes none ([`ConnShared::client_blocked`]).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::clock;
use crate::proxy::client_io::{ConnShared, StreamProgress};
use crate::upstream::ResponseBody;
use crate::upstream::body::{BodyError, IdleBody};

/// Called once when a response to the client is finished, with the body bytes sent and how
/// the body ended.
pub trait Finish: Send + 'static {
    /// The response body ended (`end`) after `bytes` body bytes went to the client.
    fn finish(self: Box<Self>, bytes: u64, end: End);
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// All of it was sent.
    Complete,
    /// The client went away, or its connection failed, before the end.
    Cut,
    /// The server's body failed before the end (it closed, sent a malformed chunk, or went
    /// silent for `timeout server`).
    ServerFailed,
}

/// The most an HTTP/2 response hands over at a time. hyper asks for the next piece once the
/// client's window and the send buffer have room for more, so a piece is also how much a
/// client must take per `timeout client` to be making progress; a server's chunk (an HTTP/1.1
/// read can be hundreds of KiB) is cut to it. One HTTP/2 frame's worth by default.
const H2_PIECE: usize = 16 * 1024;

/// An HTTP/1.1 response body longer than this (or of unknown length) waits while its client
/// takes no data ([`ProxyBody::pace`]). A shorter one fits hyper's write buffer whole: there
/// is nothing to hold back, and no reason to pay for the watch.
const PACE_ABOVE: u64 = 16 * 1024;

enum Kind {
    Local(Option<Bytes>),
    // Not boxed: it is `Unpin`, and a box would cost an allocation per response.
    Upstream(IdleBody<ResponseBody>),
    /// An HTTP/2 response: one of the above, watched.
    Http2(Box<Watched>),
    /// A large HTTP/1 response: one of the above, paced by its client.
    Paced(Box<Paced>),
    /// The body failed; the error is returned by the next poll ([`ProxyBody::poll_frame`]).
    Failed(Option<BodyError>),
}

/// An HTTP/2 response body and what its connection's stall check reads.
struct Watched {
    kind: Kind,
    progress: Arc<StreamProgress>,
    /// What is left of the last chunk after the piece handed over.
    rest: Bytes,
}

/// An HTTP/1 response body and the connection whose client it waits for.
struct Paced {
    kind: Kind,
    conn: Arc<ConnShared>,
}

impl Kind {
    #[inline]
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Http2(watched) => watched.poll_frame(cx),
            Kind::Paced(paced) => {
                if paced.conn.client_blocked(cx) {
                    return Poll::Pending;
                }
                paced.kind.poll_frame(cx)
            }
            Kind::Failed(error) => Poll::Ready(error.take().map(Err)),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Local(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Http2(watched) => watched.rest.is_empty() && watched.kind.is_end_stream(),
            Kind::Paced(paced) => paced.kind.is_end_stream(),
            Kind::Failed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Local(None) | Kind::Failed(_) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
            Kind::Paced(paced) => paced.kind.size_hint(),
            Kind::Http2(watched) => {
                let inner = watched.kind.size_hint();
                let rest = watched.rest.len() as u64;
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + rest);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + rest);
                }
                hint
            }
        }
    }
}

impl Watched {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Asked for more: whatever was handed over before has been taken.
        self.progress.asked();
        let polled = if self.rest.is_empty() {
            match self.kind.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > H2_PIECE {
                            self.rest = data.split_off(H2_PIECE);
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let n = self.rest.len().min(H2_PIECE);
            Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
        };
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.progress.handed_over(clock::recent());
        }
        polled
    }
}

/// The body of a response to the client.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    finish: Option<Box<dyn Finish>>,
    started: Instant,
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBody")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl ProxyBody {
    pub fn local(bytes: Bytes, finish: Option<Box<dyn Finish>>) -> Self {
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Self {
            kind: Kind::Local(bytes),
            sent: 0,
            finish,
            started: clock::recent(),
        }
    }

    pub fn upstream(body: IdleBody<ResponseBody>, finish: Option<Box<dyn Finish>>) -> Self {
        Self {
            kind: Kind::Upstream(body),
            sent: 0,
            finish,
            started: clock::recent(),
        }
    }

    /// When this response body was created (the response headers were ready).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Makes this the body of an HTTP/2 response, whose progress `progress` reports.
    pub fn watch(&mut self, progress: Arc<StreamProgress>) {
        self.wrap(|kind| {
            Kind::Http2(Box::new(Watched {
                kind,
                progress,
                rest: Bytes::new(),
            }))
        });
    }

    /// Makes this HTTP/1 response's body wait while the client of `conn` takes no data, if it
    /// is a server's and longer than [`PACE_ABOVE`] (or of unknown length).
    pub fn pace(&mut self, conn: &Arc<ConnShared>) {
        let Kind::Upstream(body) = &self.kind else {
            return;
        };
        if !worth_pacing(&body.size_hint()) {
            return;
        }
        self.wrap(|kind| {
            Kind::Paced(Box::new(Paced {
                kind,
                conn: Arc::clone(conn),
            }))
        });
    }

    /// Puts this body's kind inside another one, which `outer` makes of it.
    fn wrap(&mut self, outer: impl FnOnce(Kind) -> Kind) {
        let kind = std::mem::replace(&mut self.kind, Kind::Local(None));
        self.kind = outer(kind);
    }

    /// The server's body failed (it closed after the head, sent a malformed chunk, went
    /// silent): the error waits one poll. hyper writes what it holds (the head, data not yet
    /// sent) only once the body waits; on an error at once it would drop it unsent, and a
    /// client whose server failed right after the head would get nothing at all.
    #[cold]
    #[inline(never)]
    fn defer(
        &mut self,
        error: BodyError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.kind = Kind::Failed(Some(error));
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn done(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            let end = if complete {
                End::Complete
            } else if matches!(self.kind, Kind::Failed(_)) {
                // Only a server's body fails (`defer`).
                End::ServerFailed
            } else {
                End::Cut
            };
            f.finish(self.sent, end);
        }
    }
}

/// Whether a body of this size can hold more than hyper takes at once ([`PACE_ABOVE`]).
fn worth_pacing(size: &SizeHint) -> bool {
    size.exact().is_none_or(|n| n > PACE_ABOVE)
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.kind.poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(ref frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) if !matches!(this.kind, Kind::Failed(_)) => {
                return this.defer(e, cx);
            }
            Poll::Ready(Some(Err(_))) => this.done(false),
            Poll::Ready(None) => this.done(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away or the connection failed. An empty
        // local body that hyper never polled (e.g. HEAD) is complete all the same.
        let complete = self.is_end_stream();
        self.done(complete);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::client_io::tests::refusing_writes;

    fn poll(body: &mut ProxyBody) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_paced_body_hands_over_nothing_while_its_client_takes_no_data() {
        crate::proxy::workers::runtime_builder()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let (mut io, mut client, conn, _) = refusing_writes().await;
                let mut body = ProxyBody::local(Bytes::from_static(b"data"), None);
                body.wrap(|kind| Kind::Paced(Box::new(Paced { kind, conn })));
                assert!(poll(&mut body).is_pending());
                assert!(poll(&mut body).is_pending());
                assert_eq!(body.sent, 0);
                assert!(!body.is_end_stream());
                // The client reads and a write goes through: the data comes.
                let mut buf = [0u8; 16];
                client.read_exact(&mut buf).await.unwrap();
                io.write_all(b"more").await.unwrap();
                let Poll::Ready(Some(Ok(frame))) = poll(&mut body) else {
                    panic!("no data once the client reads");
                };
                assert_eq!(frame.into_data().unwrap(), "data");
                assert!(body.is_end_stream());
            });
    }

    #[test]
    fn only_large_or_unsized_server_bodies_are_paced() {
        assert!(!worth_pacing(&SizeHint::with_exact(0)));
        assert!(!worth_pacing(&SizeHint::with_exact(PACE_ABOVE)));
        assert!(worth_pacing(&SizeHint::with_exact(PACE_ABOVE + 1)));
        assert!(worth_pacing(&SizeHint::new()), "chunked: of unknown length");
        let conn = Arc::new(ConnShared::default());
        let mut local = ProxyBody::local(Bytes::from(vec![0u8; 64 * 1024]), None);
        local.pace(&conn);
        assert!(
            matches!(local.kind, Kind::Local(_)),
            "a local answer is never paced"
        );
    }
}
