//! Request bodies on their way to a server, streamed, never buffered whole.
//!
//! - [`IdleBody`] cuts a body that produces no frame for an inactivity timeout (`client` for
//!   uploads, `server` for downloads).
//! - [`UpstreamBody`] is what goes to a server. A request body stays *reclaimable* until the
//!   upstream connection first reads from it, so a request whose connect failed can be sent to
//!   another server with its body intact: nothing of it reached the first one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::clock;

/// Errors a proxied body can end with.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

pin_project! {
    /// A body that fails with [`BodyError::Idle`] when no frame arrives for `idle`.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    *this.timer = None;
                    return Poll::Ready(Some(Err(BodyError::Idle(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's request body on its way upstream.
///
/// It may hold a token (`hold`) for as long as the body has not ended: on HTTP/1 the client
/// connection counts the request as in flight until its body is in, so that the rest of a
/// body still arriving after an early response (a 413, a local 503) is not taken for the
/// start of the next request head. A body dropped before its end is read to its end by a
/// task of its own, which keeps the token until then, for at most the idle timeout in all;
/// then the connection closes (hyper closes one whose request body is left unfinished).
pub struct ClientBody {
    /// `None` only once dropped.
    inner: Option<IdleBody<Incoming>>,
    hold: Option<Box<dyn Send + Sync>>,
}

impl ClientBody {
    pub fn new(inner: IdleBody<Incoming>, hold: Option<Box<dyn Send + Sync>>) -> Self {
        Self {
            inner: Some(inner),
            hold,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.hold = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let (Some(hold), Some(mut rest)) = (self.hold.take(), self.inner.take()) else {
            return;
        };
        if rest.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // As nginx's lingering close: for at most the idle timeout (`timeout client`) in all;
        // a client still sending then is cut off.
        let limit = rest.idle;
        runtime.spawn(async move {
            use http_body_util::BodyExt as _;
            let _ = tokio::time::timeout(limit, async {
                while let Some(Ok(_)) = rest.frame().await {}
            })
            .await;
            drop(hold);
        });
    }
}

/// A request body slot shared between attempts: whoever reads first takes the body.
#[derive(Clone)]
pub struct Reclaimable {
    shared: Arc<Shared>,
    hint: SizeHint,
}

struct Shared {
    slot: Mutex<Option<ClientBody>>,
    progress: Mutex<Progress>,
    /// Body bytes read from the client and handed to a server.
    received: AtomicU64,
}

/// How the body's way to the server goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// When the server last took a piece of the body (or its end).
    pub last_sent: Option<Instant>,
    /// The server's connection asked for more and the client has sent nothing yet: the wait
    /// is the client's (`timeout client`), not the server's.
    pub awaiting_client: bool,
}

impl fmt::Debug for Reclaimable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reclaimable")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl Reclaimable {
    pub fn new(body: ClientBody) -> Self {
        let hint = body.size_hint();
        Self {
            shared: Arc::new(Shared {
                slot: Mutex::new(Some(body)),
                progress: Mutex::default(),
                received: AtomicU64::new(0),
            }),
            hint,
        }
    }

    /// Whether the body's length is known (a `Content-Length`, or HTTP/2's end of stream).
    pub fn length_known(&self) -> bool {
        self.hint.exact().is_some()
    }

    /// Whether the body is still unread, i.e. a new attempt can carry it.
    pub fn is_intact(&self) -> bool {
        self.shared
            .slot
            .lock()
            .map(|s| s.is_some())
            .unwrap_or(false)
    }

    /// When the server last took a piece of the body, or its end (`None`: nothing yet), and
    /// whether it waits for the client now. `timeout server` counts from the last piece, and
    /// not while the client is the one awaited: a long or stalled upload is not the server's
    /// delay.
    pub fn progress(&self) -> Progress {
        self.shared.progress.lock().map(|p| *p).unwrap_or_default()
    }

    /// The body bytes read from the client and handed to a server so far (what the access
    /// log and the counters call bytes in): what arrived, not what a `Content-Length`
    /// announced.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    fn take(&self) -> Option<ClientBody> {
        self.shared.slot.lock().ok().and_then(|mut s| s.take())
    }

    fn mark_sent(&self) {
        if let Ok(mut p) = self.shared.progress.lock() {
            *p = Progress {
                last_sent: Some(clock::recent()),
                awaiting_client: false,
            };
        }
    }

    fn mark_awaiting_client(&self) {
        if let Ok(mut p) = self.shared.progress.lock() {
            p.awaiting_client = true;
        }
    }
}

/// What is sent to a server as a request body.
pub enum UpstreamBody {
    Empty,
    /// Not yet read: the body is still in the shared slot.
    Pending(Reclaimable),
    /// Being read: taken out of the slot (which keeps the time of the last piece sent).
    Streaming(Box<ClientBody>, Reclaimable),
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamBody::Empty => f.write_str("Empty"),
            UpstreamBody::Pending(_) => f.write_str("Pending"),
            UpstreamBody::Streaming(..) => f.write_str("Streaming"),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let UpstreamBody::Pending(slot) = this {
            *this = match slot.take() {
                Some(body) => UpstreamBody::Streaming(Box::new(body), slot.clone()),
                // Another attempt owns it now; this one must not send anything.
                None => UpstreamBody::Empty,
            };
        }
        match this {
            UpstreamBody::Streaming(body, slot) => {
                let polled = Pin::new(body.as_mut()).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            slot.shared
                                .received
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        slot.mark_sent();
                    }
                    Poll::Ready(None) => slot.mark_sent(),
                    Poll::Pending => slot.mark_awaiting_client(),
                    Poll::Ready(Some(Err(_))) => {}
                }
                polled
            }
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Pending(slot) => slot.hint.exact() == Some(0),
            UpstreamBody::Streaming(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Pending(slot) => slot.hint,
            UpstreamBody::Streaming(body, _) => body.size_hint(),
        }
    }
}
