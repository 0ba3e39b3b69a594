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

pub(crate) use crate::model::{Cidr, Htpasswd};
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

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
        let known_user = self.users.hash_of(&user).is_some();
        let hash = self
            .users
            .hash_of(&user)
            .unwrap_or(UNKNOWN_USER_HASH)
            .to_string();
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
