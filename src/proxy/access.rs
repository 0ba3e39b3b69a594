//! The access policies the proxy enforces itself (pod scope): an IP allow-list, judged on the
//! client's address as the trusted proxies in front of the sidecar (the ingress controller)
//! report it, and HTTP basic auth against an htpasswd file of bcrypt hashes.
//!
//! A wrong password costs a bcrypt verification (tens of milliseconds of CPU): verifications run
//! one at a time on the blocking pool, and a credential's verdict is remembered (a hash of it,
//! never the password), so a browser that sends the same header with every request, or a client
//! that repeats a wrong one, costs one verification.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// An address range, `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address or range, e.g. 10.0.0.0/8 or 192.0.2.7")
        })?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

fn trusted_by(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not a trusted proxy (each proxy appends the
/// address it got the request from, so entries left of an untrusted one are the client's own
/// words). An entry that is no address ends the walk at the last trusted hop, which no
/// allow-list should contain.
pub(crate) fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> IpAddr {
    let mut hop = peer.to_canonical();
    if !trusted_by(trusted, hop) {
        return hop;
    }
    for entry in forwarded_for.iter().rev().flat_map(|h| h.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            return hop;
        };
        hop = ip.to_canonical();
        if !trusted_by(trusted, hop) {
            return hop;
        }
    }
    hop
}

/// The users of an htpasswd file (`user:hash` lines, bcrypt hashes as `htpasswd -B` writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Htpasswd {
    users: HashMap<String, String>,
}

/// Most users one htpasswd file may list, and the longest line read.
const MAX_USERS: usize = 1000;
const MAX_LINE: usize = 512;

impl Htpasswd {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            if line.len() > MAX_LINE {
                return Err(format!("line {at} is longer than {MAX_LINE} bytes"));
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {at} is not user:hash"));
            };
            if user.is_empty() {
                return Err(format!("line {at} has no user name"));
            }
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {at} (user {user:?}) is not a bcrypt hash: only bcrypt is accepted \
                     (MD5, SHA-1 and crypt hashes are too weak); write it with `htpasswd -B`"
                ));
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {at}: user {user:?} is listed twice"));
            }
            if users.len() > MAX_USERS {
                return Err(format!("more than {MAX_USERS} users"));
            }
        }
        if users.is_empty() {
            return Err("it lists no user (user:hash lines, from `htpasswd -B`)".into());
        }
        Ok(Self { users })
    }
}

/// The credential verdicts remembered per policy: enough for every user and a good many wrong
/// guesses; when full it starts over (a verdict is only a saving, never a decision).
const REMEMBERED: usize = 4096;

/// HTTP basic auth against one htpasswd file.
#[derive(Debug)]
pub(crate) struct BasicAuth {
    realm: String,
    users: Htpasswd,
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
    verifying: Arc<Semaphore>,
}

/// A bcrypt hash no password matches in practice: an unknown user costs what a known one does,
/// so the answer's time does not tell which user names exist.
const UNKNOWN_USER_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

impl BasicAuth {
    pub(crate) fn new(realm: &str, users: Htpasswd, verifying: Arc<Semaphore>) -> Self {
        Self {
            realm: realm.to_string(),
            users,
            verdicts: Mutex::new(HashMap::new()),
            verifying,
        }
    }

    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    /// Whether `authorization` carries a user and password of the file.
    pub(crate) async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(decode_basic) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(known) = self.remembered(&key) {
            return known;
        }
        let hash = self
            .users
            .users
            .get(&user)
            .cloned()
            .unwrap_or_else(|| UNKNOWN_USER_HASH.to_string());
        let known_user = self.users.users.contains_key(&user);
        let Ok(_turn) = self.verifying.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known_user;
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= REMEMBERED {
            verdicts.clear();
        }
        verdicts.insert(key, ok);
        ok
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<bool> {
        self.verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }
}

/// `Basic base64(user:password)`, as RFC 7617 writes it.
fn decode_basic(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// An access policy as the proxy enforces it.
#[derive(Debug)]
pub(crate) struct Access {
    /// Client addresses allowed; empty: any.
    pub(crate) allow: Vec<Cidr>,
    pub(crate) basic_auth: Option<BasicAuth>,
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The client's address is not on the allow-list.
    Address(IpAddr),
    /// No valid credentials; the realm to ask for them in.
    Credentials { realm: String },
}

impl Access {
    pub(crate) async fn check(
        &self,
        client: IpAddr,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), Denied> {
        if !self.allow.is_empty() && !trusted_by(&self.allow, client) {
            return Err(Denied::Address(client));
        }
        if let Some(auth) = &self.basic_auth
            && !auth.allows(authorization).await
        {
            return Err(Denied::Credentials {
                realm: auth.realm().to_string(),
            });
        }
        Ok(())
    }

    /// Whether the credentials of the request are ours, not the backend's: then they are not
    /// forwarded (a composition must never see the operator's users' passwords).
    pub(crate) fn consumes_authorization(&self) -> bool {
        self.basic_auth.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("10.2.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.0.9")),
            "a v4-mapped address is the v4 one"
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.5"))
        );
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let odd = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(odd.contains(ip("198.19.255.1")) && !odd.contains(ip("198.20.0.1")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "ten", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // An untrusted peer's X-Forwarded-For is its own words.
        assert_eq!(
            client_ip(ip("192.0.2.1"), &["203.0.113.9"], &trusted),
            ip("192.0.2.1")
        );
        // The controller appended the client's address: that is the client.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &["203.0.113.9"], &trusted),
            ip("203.0.113.9")
        );
        // A client that forges an entry gets the right-most untrusted one: its own address.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &["192.0.2.50, 203.0.113.9"], &trusted),
            ip("203.0.113.9")
        );
        // Two trusted hops, several headers.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &["198.51.100.1", "10.9.9.9"], &trusted),
            ip("198.51.100.1")
        );
        // No header from a trusted peer: the peer itself.
        assert_eq!(client_ip(ip("10.0.0.5"), &[], &trusted), ip("10.0.0.5"));
        // Junk: the walk ends at the last trusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &["junk"], &trusted),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn htpasswd_accepts_bcrypt_only_and_says_why_not() {
        let ok = Htpasswd::parse(
            "# users\nalice:$2y$05$abcdefghijklmnopqrstuu5Rz3Y0W8Wd1mXQ4v0b1rj7L6n9u\n\n",
        )
        .expect("bcrypt");
        assert_eq!(ok.users.len(), 1);
        for (text, says) in [
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "bcrypt"),
            ("carol:$apr1$xyz$abc", "htpasswd -B"),
            ("nocolon", "user:hash"),
            (":$2y$05$x", "no user"),
            ("", "no user"),
            ("a:$2y$x\na:$2y$y", "twice"),
        ] {
            let e = Htpasswd::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[tokio::test]
    async fn basic_auth_lets_in_the_users_of_the_file_only() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Htpasswd::parse(&format!("alice:{hash}")).unwrap();
        let auth = BasicAuth::new("previews", users, Arc::new(Semaphore::new(1)));
        assert!(auth.allows(Some(&basic("alice", "s3cret"))).await);
        // Remembered: the same answer again, from the verdicts.
        assert!(auth.allows(Some(&basic("alice", "s3cret"))).await);
        assert!(!auth.allows(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&basic("mallory", "s3cret"))).await);
        assert!(!auth.allows(None).await);
        let bearer = HeaderValue::from_static("Bearer abc");
        assert!(!auth.allows(Some(&bearer)).await);
        let junk = HeaderValue::from_static("Basic !!!");
        assert!(!auth.allows(Some(&junk)).await);
        assert_eq!(auth.verdicts.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn an_allow_list_is_checked_before_credentials() {
        let access = Access {
            allow: vec![Cidr::parse("203.0.113.0/24").unwrap()],
            basic_auth: None,
        };
        assert_eq!(access.check(ip("203.0.113.4"), None).await, Ok(()));
        assert_eq!(
            access.check(ip("198.51.100.4"), None).await,
            Err(Denied::Address(ip("198.51.100.4")))
        );
        assert!(!access.consumes_authorization());
    }
}
