//! The body of a response to the client: a server's response or a local answer, carrying the
//! request's [`Finish`] hook so the access-log line is written when the response has been fully
//! sent (or abandoned), with the bytes actually sent.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::clock;
use crate::upstream::ResponseBody;
use crate::upstream::body::{BodyError, IdleBody};

/// Called once when a response to the client is finished, with the body bytes sent and
/// whether it completed.
pub trait Finish: Send + 'static {
    fn finish(self: Box<Self>, bytes: u64, complete: bool);
}

enum Kind {
    Local(Option<Bytes>),
    // Not boxed: it is `Unpin`, and a box would cost an allocation per response.
    Upstream(IdleBody<ResponseBody>),
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

    fn done(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            f.finish(self.sent, complete);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.done(false),
            Poll::Ready(None) => this.done(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
        }
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
