//! A DHCPv4 client state machine (RFC 2131), sans-IO: the ABD asks for an address when its
//! boot config says `ip=dhcp`. The wire format is `dhcproto`'s.
//!
//! Call order, all with the caller's clock:
//! 1. [`Client::new`] with the NIC's MAC, a random transaction id and `now`;
//! 2. send every [`Client::poll_transmit`] as a broadcast from port 68 to port 67;
//! 3. feed each datagram received on port 68 to [`Client::handle_datagram`];
//! 4. call [`Client::handle_timeout`] when [`Client::poll_timeout`] is reached;
//! 5. act on [`Client::poll_event`]: configure a [`Lease`] when bound, remove it when lost.
//!
//! States: selecting (DISCOVER until an OFFER), requesting (REQUEST until ACK or NAK),
//! bound (until T1), renewing (REQUEST with `ciaddr` until ACK, or the lease runs out).
//! Retransmissions back off 2, 4, 8, 16, 16 … s. Every request asks for broadcast replies,
//! so the caller needs no raw socket while the NIC has no address yet.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Decodable, DhcpOption, Encodable, Flags, Message, MessageType, Opcode, OptionCode,
};

/// The client's and server's UDP ports.
pub const CLIENT_PORT: u16 = 68;
/// The server's UDP port.
pub const SERVER_PORT: u16 = 67;

/// First retransmission delay, doubled up to [`MAX_RETRANSMIT`].
const FIRST_RETRANSMIT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: Duration = Duration::from_secs(16);
/// A REQUEST that gets no answer after this many tries restarts discovery.
const MAX_REQUEST_TRIES: u32 = 4;
/// The lease time assumed when a server gives none (RFC 2131 requires one in an ACK).
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// An address the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length from the subnet mask (24 when the server gives no mask).
    pub prefix: u8,
    /// The first router, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The DNS servers the server suggests (the ABD uses its configured ones when given).
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// How long it lasts.
    pub duration: Duration,
}

/// What the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Configure this lease (a first lease, or a renewal that may change nothing).
    Bound(Lease),
    /// The lease ran out or the server refused it: remove the address; discovery restarts.
    Lost,
}

/// Why a datagram was not used. Unrelated traffic is normal on a shared port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhcpError {
    /// The bytes are not a DHCP message.
    #[error("not a DHCP message: {0}")]
    Malformed(String),
    /// A reply for another client, another transaction, or the wrong state.
    #[error("not for this client: {0}")]
    Ignored(&'static str),
    /// Encoding our own message failed (a bug).
    #[error("cannot encode a DHCP message: {0}")]
    Encode(String),
}

#[derive(Debug, Clone)]
enum State {
    Selecting,
    Requesting { offer: Lease, tries: u32 },
    Bound { lease: Lease, since: Instant },
    Renewing { lease: Lease, since: Instant },
}

/// The client. See the module docs for the call order.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    xid: u32,
    state: State,
    /// When the next message is due (retransmission, T1, or lease expiry).
    deadline: Instant,
    retransmit: Duration,
    /// A message to send is pending.
    due: bool,
    events: Vec<Event>,
}

impl Client {
    /// A client that starts discovery at once.
    pub fn new(mac: [u8; 6], xid: u32, now: Instant) -> Client {
        let mut client = Client {
            mac,
            xid,
            state: State::Selecting,
            deadline: now,
            retransmit: FIRST_RETRANSMIT,
            due: false,
            events: Vec::new(),
        };
        client.retransmit_at(now);
        client
    }

    /// The lease held now, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease, .. } | State::Renewing { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// The next message to broadcast, if one is due.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Result<Vec<u8>, DhcpError>> {
        if !std::mem::take(&mut self.due) {
            return None;
        }
        let msg = match &self.state {
            State::Selecting => self.message(MessageType::Discover, None, None),
            State::Requesting { offer, .. } => {
                self.message(MessageType::Request, Some(offer), None)
            }
            State::Renewing { lease, .. } => {
                self.message(MessageType::Request, None, Some(lease.addr))
            }
            State::Bound { .. } => return None,
        };
        Some(msg.to_vec().map_err(|e| DhcpError::Encode(e.to_string())))
    }

    /// When [`Client::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// The next thing to act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// Advances timers: retransmits, starts renewal at T1, drops an expired lease.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        match &mut self.state {
            State::Selecting => self.retransmit_at(now),
            State::Requesting { tries, .. } => {
                *tries += 1;
                if *tries >= MAX_REQUEST_TRIES {
                    self.restart(now);
                } else {
                    self.retransmit_at(now);
                }
            }
            State::Bound { lease, since } => {
                let (lease, since) = (lease.clone(), *since);
                self.state = State::Renewing { lease, since };
                self.retransmit = FIRST_RETRANSMIT;
                self.retransmit_at(now);
            }
            State::Renewing { lease, since } => {
                let expiry = *since + lease.duration;
                if now >= expiry {
                    self.events.push(Event::Lost);
                    self.restart(now);
                } else {
                    self.retransmit_at(now);
                    self.deadline = self.deadline.min(expiry);
                }
            }
        }
    }

    /// Takes a datagram received on port 68.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DhcpError> {
        let msg = Message::from_bytes(bytes).map_err(|e| DhcpError::Malformed(e.to_string()))?;
        if msg.opcode() != Opcode::BootReply {
            return Err(DhcpError::Ignored("a request, not a reply"));
        }
        if msg.xid() != self.xid || msg.chaddr().get(..6) != Some(&self.mac[..]) {
            return Err(DhcpError::Ignored("another transaction or client"));
        }
        let kind = msg.opts().msg_type().ok_or(DhcpError::Ignored(
            "a BOOTP reply without a DHCP message type",
        ))?;
        match (&self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let offer = lease_from(&msg)?;
                self.state = State::Requesting { offer, tries: 0 };
                self.retransmit = FIRST_RETRANSMIT;
                self.retransmit_at(now);
                Ok(())
            }
            (State::Requesting { offer, .. }, MessageType::Ack) if msg.yiaddr() == offer.addr => {
                self.bind(now, lease_from(&msg)?);
                Ok(())
            }
            (State::Renewing { lease, .. }, MessageType::Ack) if msg.yiaddr() == lease.addr => {
                self.bind(now, lease_from(&msg)?);
                Ok(())
            }
            (State::Requesting { .. } | State::Renewing { .. }, MessageType::Nak) => {
                if matches!(self.state, State::Renewing { .. }) {
                    self.events.push(Event::Lost);
                }
                self.restart(now);
                Ok(())
            }
            _ => Err(DhcpError::Ignored(
                "a reply that does not fit the current state",
            )),
        }
    }

    fn bind(&mut self, now: Instant, lease: Lease) {
        self.events.push(Event::Bound(lease.clone()));
        // Renew at T1, half the lease (RFC 2131 §4.4.5).
        self.deadline = now + lease.duration / 2;
        self.state = State::Bound { lease, since: now };
        self.due = false;
    }

    fn restart(&mut self, now: Instant) {
        self.state = State::Selecting;
        self.retransmit = FIRST_RETRANSMIT;
        self.xid = self.xid.wrapping_add(1);
        self.retransmit_at(now);
    }

    /// Sends now and schedules the next try with backoff.
    fn retransmit_at(&mut self, now: Instant) {
        self.due = true;
        self.deadline = now + self.retransmit;
        self.retransmit = (self.retransmit * 2).min(MAX_RETRANSMIT);
    }

    fn message(
        &self,
        kind: MessageType,
        offer: Option<&Lease>,
        ciaddr: Option<Ipv4Addr>,
    ) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(
            self.xid,
            ciaddr.unwrap_or(unspecified),
            unspecified,
            unspecified,
            unspecified,
            &self.mac,
        );
        msg.set_flags(Flags::default().set_broadcast());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
        ]));
        if let Some(offer) = offer {
            opts.insert(DhcpOption::RequestedIpAddress(offer.addr));
            opts.insert(DhcpOption::ServerIdentifier(offer.server));
        }
        msg
    }
}

/// The lease an OFFER or ACK describes.
fn lease_from(msg: &Message) -> Result<Lease, DhcpError> {
    let addr = msg.yiaddr();
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(DhcpError::Malformed(format!("offered address {addr}")));
    }
    let opts = msg.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            let bits = u32::from(*mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(DhcpError::Malformed(format!("subnet mask {mask}")));
            }
            bits.leading_ones() as u8
        }
        _ => 24,
    };
    let gateway = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => msg.siaddr(),
    };
    let duration = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => Duration::from_secs(u64::from(*secs).max(60)),
        _ => DEFAULT_LEASE,
    };
    Ok(Lease {
        addr,
        prefix,
        gateway,
        dns,
        server,
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's reply of `kind` to `request`.
    fn reply(request: &[u8], kind: MessageType, yiaddr: Ipv4Addr, lease_secs: u32) -> Vec<u8> {
        let req = Message::from_bytes(request).unwrap();
        let mut msg = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &req.chaddr()[..6],
        );
        msg.set_opcode(Opcode::BootReply);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        opts.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        opts.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        opts.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        opts.insert(DhcpOption::AddressLeaseTime(lease_secs));
        msg.to_vec().unwrap()
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const YIADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn sent(c: &mut Client) -> Message {
        Message::from_bytes(&c.poll_transmit().expect("a message is due").unwrap()).unwrap()
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    /// DISCOVER, OFFER, REQUEST, ACK: bound with the server's mask, router and lease.
    fn bind(c: &mut Client, now: Instant) -> Lease {
        let discover = sent(c);
        assert_eq!(kind(&discover), MessageType::Discover);
        assert!(discover.flags().broadcast());
        c.handle_datagram(
            now,
            &reply(&discover.to_vec().unwrap(), MessageType::Offer, YIADDR, 600),
        )
        .unwrap();
        let request = sent(c);
        assert_eq!(kind(&request), MessageType::Request);
        assert_eq!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(YIADDR))
        );
        c.handle_datagram(
            now,
            &reply(&request.to_vec().unwrap(), MessageType::Ack, YIADDR, 600),
        )
        .unwrap();
        match c.poll_event() {
            Some(Event::Bound(lease)) => lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    #[test]
    fn full_exchange_binds_with_the_servers_options() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, 7, t0);
        let lease = bind(&mut c, t0);
        assert_eq!(
            lease,
            Lease {
                addr: YIADDR,
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                server: Ipv4Addr::new(10, 0, 2, 2),
                duration: Duration::from_secs(600),
            }
        );
        assert!(c.poll_transmit().is_none(), "nothing to send while bound");
        assert_eq!(
            c.poll_timeout(),
            t0 + Duration::from_secs(300),
            "renew at T1"
        );
    }

    #[test]
    fn discover_is_retransmitted_with_backoff() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, 1, t0);
        sent(&mut c);
        assert!(c.poll_transmit().is_none());
        c.handle_timeout(t0 + Duration::from_secs(1));
        assert!(c.poll_transmit().is_none(), "not due before the deadline");
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let now = c.poll_timeout();
            c.handle_timeout(now);
            assert_eq!(kind(&sent(&mut c)), MessageType::Discover);
            gaps.push((c.poll_timeout() - now).as_secs());
        }
        assert_eq!(gaps, [4, 8, 16, 16, 16]);
    }

    #[test]
    fn foreign_and_garbage_datagrams_are_ignored() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, 9, t0);
        let discover = sent(&mut c).to_vec().unwrap();
        assert!(matches!(
            c.handle_datagram(t0, b"\x02\x01garbage"),
            Err(DhcpError::Malformed(_))
        ));
        let mut other =
            Message::from_bytes(&reply(&discover, MessageType::Offer, YIADDR, 60)).unwrap();
        other.set_xid(10);
        assert!(matches!(
            c.handle_datagram(t0, &other.to_vec().unwrap()),
            Err(DhcpError::Ignored(_))
        ));
        // An ACK while selecting does not fit.
        assert!(matches!(
            c.handle_datagram(t0, &reply(&discover, MessageType::Ack, YIADDR, 60)),
            Err(DhcpError::Ignored(_))
        ));
        assert!(c.poll_event().is_none());
    }

    #[test]
    fn renewal_at_t1_and_loss_at_expiry() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, 3, t0);
        bind(&mut c, t0);
        let t1 = c.poll_timeout();
        c.handle_timeout(t1);
        let renew = sent(&mut c);
        assert_eq!(kind(&renew), MessageType::Request);
        assert_eq!(renew.ciaddr(), YIADDR);
        // The server renews: bound again, T1 moves.
        c.handle_datagram(
            t1,
            &reply(&renew.to_vec().unwrap(), MessageType::Ack, YIADDR, 600),
        )
        .unwrap();
        assert!(matches!(c.poll_event(), Some(Event::Bound(_))));
        assert_eq!(c.poll_timeout(), t1 + Duration::from_secs(300));

        // Now nobody answers: retransmit until the lease runs out, then start over.
        let t2 = c.poll_timeout();
        c.handle_timeout(t2);
        while c.lease().is_some() {
            let _ = c.poll_transmit();
            let now = c.poll_timeout();
            assert!(
                now <= t1 + Duration::from_secs(600),
                "the deadline never passes expiry"
            );
            c.handle_timeout(now);
        }
        assert_eq!(c.poll_event(), Some(Event::Lost));
        assert_eq!(kind(&sent(&mut c)), MessageType::Discover);
    }

    #[test]
    fn nak_restarts_discovery_with_a_new_transaction() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, 5, t0);
        let discover = sent(&mut c).to_vec().unwrap();
        c.handle_datagram(t0, &reply(&discover, MessageType::Offer, YIADDR, 60))
            .unwrap();
        let request = sent(&mut c).to_vec().unwrap();
        c.handle_datagram(t0, &reply(&request, MessageType::Nak, YIADDR, 60))
            .unwrap();
        let again = sent(&mut c);
        assert_eq!(kind(&again), MessageType::Discover);
        assert_eq!(again.xid(), 6);
    }
}
