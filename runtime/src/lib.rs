//! PoV's polled-mode runtime, shaped like SPDK's event framework, and the transport
//! seam shared by `pov-dpud` and `pov-proxy`.
//!
//! * [`reactor`]: one reactor thread per configured core runs registered
//!   [`Poller`](reactor::Poller)s in a loop and receives messages (closures) from other
//!   threads through a channel. It is *adaptive*: it busy-polls while pollers report
//!   work, and after an idle window (default 100 µs) sleeps in `epoll_wait` on its
//!   eventfd, the pollers' file descriptors and the earliest poller deadline, so an idle
//!   reactor costs ~0% CPU. Messages and [`ReactorHandle::wake`](reactor::ReactorHandle::wake)
//!   wake it at once.
//! * [`transport`]: the [`Transport`](transport::Transport) trait (send a frame, poll for
//!   received frames; never blocks) with a TCP implementation used by default and an
//!   in-memory pair for tests. Frames are `pov_proto::wire` frames.
//!
//! Raw system calls (eventfd, epoll, CPU affinity) live in [`sys`].

pub mod reactor;
pub mod sys;
pub mod transport;

pub use reactor::{FdRegistry, PollStatus, Poller, PollerId, Reactor, ReactorConfig, ReactorContext, ReactorHandle, Runtime};
pub use transport::{Listener, Transport, TransportError};
