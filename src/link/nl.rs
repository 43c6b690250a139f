//! The blocking netlink socket of the hot path: requests batched into one
//! `sendmsg`, their answers read at once into a buffer per thread, and
//! dumps read to their end. It never waits for anything but the kernel.

use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

/// A blocking netlink socket that sends a batch of requests in one
/// `sendmsg` and reads every answer before it returns.
///
/// rtnetlink handles a request inside the `sendmsg` that carries it (the
/// socket's receive queue holds the answers when the call returns), so
/// "blocking" here never waits for anything but the kernel's own work, as a
/// `sendto` of the async connection's task does. What this saves is the
/// async connection's one request per poll: the inside of a sandbox is
/// configured with one `sendmsg` and one `recv`, as in the kernel floor.
#[derive(Debug)]
pub(crate) struct Nl {
    sock: rtnetlink::sys::Socket,
    seq: u32,
}

thread_local! {
    /// Where [`Nl::batch`] receives answers (64 KiB, as a netlink dump's
    /// messages): made once per thread, written only as far as answers go.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(64 * 1024));
}

/// What the kernel answered to one request of a batch: the messages it sent
/// back for it (a reply to a get, an echo), or its errno.
pub(super) type Answer = std::result::Result<Vec<RouteNetlinkMessage>, Errno>;

impl Nl {
    /// The socket, for the ioctls that go to its namespace.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }

    /// A socket in the calling thread's network namespace (it stays bound to
    /// it whichever thread uses it later, netlink(7)).
    pub(crate) fn here() -> std::io::Result<Nl> {
        let sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        sock.set_netlink_get_strict_chk(true)?;
        Ok(Nl { sock, seq: 0 })
    }

    /// Send `reqs` (message, flags) in one `sendmsg`, every one with
    /// `NLM_F_ACK`, and collect the answer to each, in order.
    pub(crate) fn batch(
        &mut self,
        reqs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> std::io::Result<Vec<Answer>> {
        let first = self.seq.wrapping_add(1);
        let mut msgs = Vec::with_capacity(reqs.len());
        for (inner, flags) in reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut m = NetlinkMessage::from(inner);
            m.header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
            m.header.sequence_number = self.seq;
            m.finalize();
            msgs.push(m);
        }
        let len = msgs.iter().map(NetlinkMessage::buffer_len).sum();
        let mut buf = vec![0u8; len];
        let mut off = 0;
        for m in &msgs {
            m.serialize(&mut buf[off..off + m.buffer_len()]);
            off += m.buffer_len();
        }
        self.send(&buf)?;
        let n = msgs.len();
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
        let mut replies: Vec<Vec<RouteNetlinkMessage>> = (0..n).map(|_| Vec::new()).collect();
        let mut pending = n;
        if pending == 0 {
            return Ok(Vec::new());
        }
        self.receive(|msg| {
            // Answers to an earlier, abandoned batch are skipped.
            let Some(i) = usize::try_from(msg.header.sequence_number.wrapping_sub(first))
                .ok()
                .filter(|i| *i < n)
            else {
                return pending == 0;
            };
            match msg.payload {
                NetlinkPayload::Error(err) => {
                    if answers[i].is_none() {
                        pending -= 1;
                    }
                    answers[i] = Some(match err.code {
                        None => Ok(std::mem::take(&mut replies[i])),
                        Some(code) => Err(Errno::from_raw(-code.get())),
                    });
                }
                NetlinkPayload::InnerMessage(m) => replies[i].push(m),
                _ => {}
            }
            pending == 0
        })?;
        if let Some(t) = started {
            tracing::debug!(
                requests = n,
                kinds = %kinds(&msgs),
                failed = answers.iter().filter(|a| !matches!(a, Some(Ok(_)))).count(),
                elapsed_us = t.elapsed().as_micros(),
                "netlink batch"
            );
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(Errno::EIO)))
            .collect())
    }

    /// Send `req` as a dump (`NLM_F_DUMP`) and collect what the kernel
    /// sends for it until its `NLMSG_DONE`, or its errno.
    pub(crate) fn dump(&mut self, req: RouteNetlinkMessage) -> std::io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = NetlinkMessage::from(req);
        m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        m.header.sequence_number = seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.send(&buf)?;
        let mut got = Vec::new();
        let mut answer = None;
        self.receive(|msg| {
            if msg.header.sequence_number == seq && answer.is_none() {
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => got.push(m),
                    NetlinkPayload::Done(_) => answer = Some(Ok(std::mem::take(&mut got))),
                    NetlinkPayload::Error(err) => {
                        answer = Some(Err(err
                            .code
                            .map_or(Errno::EIO, |c| Errno::from_raw(-c.get()))));
                    }
                    _ => {}
                }
            }
            answer.is_some()
        })?;
        Ok(answer.unwrap_or(Err(Errno::EIO)))
    }

    /// Send `buf` in one `sendmsg`, again if a signal interrupts it.
    fn send(&self, buf: &[u8]) -> std::io::Result<()> {
        loop {
            match self.sock.send(buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receive datagrams, giving `on` each message in them, until `on` has
    /// said that it has all it waits for (at the end of that datagram).
    fn receive(
        &mut self,
        mut on: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> bool,
    ) -> std::io::Result<()> {
        // Received into a buffer of the thread's, not zeroed for each call.
        RECV_BUF.with_borrow_mut(|rbuf| loop {
            rbuf.clear();
            let got = loop {
                match self.sock.recv(rbuf, 0) {
                    Ok(got) => break got.min(rbuf.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            let mut off = 0;
            let mut done = false;
            while off < got {
                let data = &rbuf[off..got];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let step = usize::try_from(msg.header.length)
                    .unwrap_or(usize::MAX)
                    .next_multiple_of(4);
                if step == 0 {
                    break;
                }
                off = off.saturating_add(step);
                done |= on(msg);
            }
            if done {
                return Ok(());
            }
        })
    }
}

/// The kinds of the messages of a batch, for diagnostics: `NewLink,SetLink`.
fn kinds(msgs: &[NetlinkMessage<RouteNetlinkMessage>]) -> String {
    let mut out = String::new();
    for m in msgs {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(match &m.payload {
            NetlinkPayload::InnerMessage(inner) => match inner {
                RouteNetlinkMessage::NewLink(_) => "NewLink",
                RouteNetlinkMessage::SetLink(_) => "SetLink",
                RouteNetlinkMessage::DelLink(_) => "DelLink",
                RouteNetlinkMessage::GetLink(_) => "GetLink",
                RouteNetlinkMessage::NewAddress(_) => "NewAddress",
                RouteNetlinkMessage::GetAddress(_) => "GetAddress",
                RouteNetlinkMessage::NewRoute(_) => "NewRoute",
                _ => "other",
            },
            _ => "other",
        });
    }
    out
}
