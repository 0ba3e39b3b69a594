//! Who may open one more connection to the sidecar's HTTP server (pure).
//!
//! Every container in dind reaches the server (the pod's address, or loopback with host
//! networking), and a `wait=routable` request legitimately holds its connection for up to 100 s:
//! one container could hold every connection and starve the kubelet's probes, and the kubelet
//! would then restart a healthy sidecar. So: each peer address may hold a few connections, all
//! peers together a bounded number, and the node's address (the kubelet's probes come from it,
//! `HOST_IP` from the downward API) has a budget of its own that nobody else can use.

use std::collections::HashMap;
use std::net::IpAddr;

/// Connections one peer address may hold (a CI job's `wait`, a scraper, a browser).
pub const PER_PEER: usize = 8;
/// Connections all peers but the node may hold together.
pub const TOTAL: usize = 64;
/// Connections the node's address may hold (probes, node-local scrapers), apart from the others.
pub(crate) const NODE: usize = 16;

#[derive(Debug)]
pub(crate) struct ConnLimits {
    node: Option<IpAddr>,
    open: HashMap<IpAddr, usize>,
    others: usize,
}

impl ConnLimits {
    pub(crate) fn new(node: Option<IpAddr>) -> Self {
        Self {
            node,
            open: HashMap::new(),
            others: 0,
        }
    }

    /// Takes a connection slot for `peer`, or says no (the connection is then closed).
    pub(crate) fn admit(&mut self, peer: IpAddr) -> bool {
        let held = self.open.get(&peer).copied().unwrap_or(0);
        let ok = if Some(peer) == self.node {
            held < NODE
        } else {
            held < PER_PEER && self.others < TOTAL
        };
        if ok {
            *self.open.entry(peer).or_insert(0) += 1;
            if Some(peer) != self.node {
                self.others += 1;
            }
        }
        ok
    }

    /// Gives back a slot `admit` gave `peer`.
    pub(crate) fn release(&mut self, peer: IpAddr) {
        if let Some(n) = self.open.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&peer);
            }
            if Some(peer) != self.node {
                self.others = self.others.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([172, 17, 0, last])
    }

    #[test]
    fn one_peer_cannot_take_more_than_its_share() {
        let mut l = ConnLimits::new(None);
        for _ in 0..PER_PEER {
            assert!(l.admit(ip(2)));
        }
        assert!(!l.admit(ip(2)), "over the per-peer limit");
        assert!(l.admit(ip(3)), "another peer still gets in");
        l.release(ip(2));
        assert!(l.admit(ip(2)), "a released slot is free again");
    }

    #[test]
    fn many_peers_fill_the_total_but_never_the_node_s_budget() {
        let node = IpAddr::from([10, 0, 0, 1]);
        let mut l = ConnLimits::new(Some(node));
        let mut admitted = 0;
        for peer in 2..=200u8 {
            for _ in 0..PER_PEER {
                if l.admit(ip(peer)) {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, TOTAL);
        assert!(!l.admit(ip(201)), "the total is reached");
        for _ in 0..NODE {
            assert!(l.admit(node), "the node's own budget");
        }
        assert!(!l.admit(node), "bounded too");
        l.release(node);
        assert!(!l.admit(ip(201)), "a node slot is not the others'");
        l.release(ip(2));
        assert!(l.admit(ip(201)));
    }
}
