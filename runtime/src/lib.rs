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
//!   received frames; never blocks), typed [`Endpoint`]s with a scheme → connector
//!   registry whose connection attempts never block a reactor, a TCP implementation
//!   used by default and (feature `testing`) in-memory transports and the conformance
//!   bodies. Frames are `pov_proto::wire` frames.
//! * [`sched`]: the [`Scheduler`](sched::Scheduler) seam where ready requests wait
//!   for their turn (QoS, paper §4.5), with the arrival-order [`Fifo`](sched::Fifo).
//! * [`qos`]: the DPU's QoS scheduler ([`QosScheduler`](qos::QosScheduler)): LC before
//!   BC, BC by mClock-style reservation then weight (start-time fair queueing), every
//!   tenant held to its ops and bytes limits by token buckets; pure, property-tested.
//! * [`ErrorChain`] (from `pov_proto`): prints an error with its sources, for logs
//!   (error types here never repeat their source in their own message).
//!
//! System calls (eventfd, epoll, poll, CPU affinity) go through `rustix` in [`sys`],
//! the crate's only `unsafe` code.

pub mod cpus;
pub mod pid;
pub mod qos;
pub mod reactor;
pub mod sched;
pub mod sys;
pub mod transport;

pub use reactor::{FdRegistry, PollStatus, Poller, PollerId, Reactor, ReactorConfig, ReactorContext, ReactorHandle, Runtime};
pub use sys::Interest;
pub use transport::{Endpoint, Listener, Transport, TransportError};

pub use pov_proto::ErrorChain;
