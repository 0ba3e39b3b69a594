//! DNS-safe names, hosts and hashes (pure).
//!
//! Everything user-controlled (service and project names, pod names, label values) ends up in
//! host names, object names, label values and port names, each with its own grammar. These
//! functions map arbitrary input onto those grammars *deterministically* (the same input always
//! gives the same name, so a resync never renames objects) and *injectively in practice*: when a
//! name has to be shortened or sanitized, a hash of the raw input keeps distinct inputs distinct.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest DNS label (RFC 1123 / RFC 1035) and longest Kubernetes label value.
pub(crate) const MAX_LABEL_LEN: usize = 63;

/// Length of `-` + [`short_hash`]: what a shortened name reserves for its disambiguating suffix.
const HASH_SUFFIX_LEN: usize = 9;

/// Why a host-label template cannot be used. Raised at start-up so that a bad `--host-template`
/// fails before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NamingError {
    #[error("host template is empty; use e.g. `{{service}}-{{port}}-{{project}}-{{pod}}`")]
    EmptyTemplate,
    #[error(
        "host template `{template}` has an unbalanced brace at byte {position}; placeholders are written `{{name}}`"
    )]
    UnbalancedBrace { template: String, position: usize },
    #[error(
        "host template `{template}` uses unknown placeholder `{{{name}}}`; known: {{service}}, {{port}}, {{project}}, {{pod}}"
    )]
    UnknownPlaceholder { template: String, name: String },
    #[error(
        "host template `{template}` contains '.', but a host must be ONE DNS label under the domain (wildcard DNS and certificates match one label); use '-' instead"
    )]
    ContainsDot { template: String },
    #[error(
        "host template `{template}` contains {ch:?}; literal text may only use letters, digits and '-'"
    )]
    InvalidCharacter { template: String, ch: char },
}

fn sha256_hex(input: &str, hex_len: usize) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out.truncate(hex_len);
    out
}

/// First 8 hex chars of sha256: short enough for names, wide enough (32 bits) to keep the few
/// names that share a sanitized prefix apart.
pub fn short_hash(input: &str) -> String {
    sha256_hex(input, 8)
}

/// First `n` (≤ 64) hex chars of sha256, for callers that need more than [`short_hash`].
pub(crate) fn hash_hex(input: &str, n: usize) -> String {
    sha256_hex(input, n.min(64))
}

/// First 8 bytes of sha256 as a number, for stable pseudo-random choices (service ports).
pub(crate) fn hash_u64(input: &str) -> u64 {
    let digest = Sha256::digest(input.as_bytes());
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    u64::from_be_bytes(bytes)
}

/// Lowercase, `[a-z0-9-]` only, no runs of '-', no leading/trailing '-'; may be empty.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(256));
    let mut last_dash = true; // suppresses a leading '-'
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            last_dash = false;
        } else if !last_dash {
            out.push('-');
            last_dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Cuts an ASCII name to `max` bytes and drops the '-' the cut may leave at the end.
fn cut(mut name: String, max: usize) -> String {
    name.truncate(max);
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// Appends `-<short_hash(hash_input)>` to a (possibly empty) base, keeping the whole ≤ 63.
fn with_hash(base: String, hash_input: &str) -> String {
    let base = cut(base, MAX_LABEL_LEN - HASH_SUFFIX_LEN);
    let hash = short_hash(hash_input);
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// A lowercase RFC 1123 label. Names that had to be shortened carry a hash of the raw input so
/// that two long inputs with a common prefix do not end up as the same host.
pub fn dns_label(raw: &str) -> String {
    let clean = sanitize(raw);
    if clean.is_empty() {
        return "x".to_string();
    }
    if clean.len() <= MAX_LABEL_LEN {
        return clean;
    }
    with_hash(clean, raw)
}

/// True for a lowercase RFC 1123 label: 1..=63 chars of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain (RFC 1123): dot-separated DNS labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `prefix/name`: a DNS subdomain prefix and a name of at most 63 of `[A-Za-z0-9-_.]`.
pub(crate) fn is_annotation_key(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, name)| {
        is_dns_subdomain(prefix)
            && !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    })
}

/// `<label>.<domain>`: the one way hosts are built, so that "a host is one label under the
/// domain" holds by construction.
pub fn full_host(label: &str, domain: &str) -> String {
    format!("{label}.{domain}")
}

/// The label of `host` when it is exactly `<one DNS label>.<domain>` (case-insensitive), so that
/// a user-supplied host can never escape the operator's domain or span several labels.
pub fn host_label_under(host: &str, domain: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return None;
    }
    let label = host.strip_suffix(&domain)?.strip_suffix('.')?;
    is_dns_label(label).then(|| label.to_string())
}

/// One piece of a parsed template.
enum Piece<'a> {
    Literal(&'a str),
    Service,
    Port,
    Project,
    Pod,
}

fn parse_template(template: &str) -> Result<Vec<Piece<'_>>, NamingError> {
    if template.is_empty() {
        return Err(NamingError::EmptyTemplate);
    }
    let unbalanced = |position| NamingError::UnbalancedBrace {
        template: template.to_string(),
        position,
    };
    let mut pieces = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                pieces.push(Piece::Literal(rest));
                break;
            }
            Some(i) => {
                if i > 0 {
                    pieces.push(Piece::Literal(&rest[..i]));
                }
                if rest[i..].starts_with('}') {
                    return Err(unbalanced(offset + i));
                }
                let after = &rest[i + 1..];
                let close = after.find(['{', '}']).ok_or(unbalanced(offset + i))?;
                if after[close..].starts_with('{') {
                    return Err(unbalanced(offset + i + 1 + close));
                }
                let name = &after[..close];
                pieces.push(match name {
                    "service" => Piece::Service,
                    "port" => Piece::Port,
                    "project" => Piece::Project,
                    "pod" => Piece::Pod,
                    _ => {
                        return Err(NamingError::UnknownPlaceholder {
                            template: template.to_string(),
                            name: name.to_string(),
                        });
                    }
                });
                let consumed = i + 1 + close + 1;
                offset += consumed;
                rest = &rest[consumed..];
            }
        }
    }
    for piece in &pieces {
        if let Piece::Literal(text) = piece {
            if text.contains('.') {
                return Err(NamingError::ContainsDot {
                    template: template.to_string(),
                });
            }
            if let Some(ch) = text
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(NamingError::InvalidCharacter {
                    template: template.to_string(),
                    ch,
                });
            }
        }
    }
    Ok(pieces)
}

/// Checks a `--host-template` at start-up. A template without placeholders is accepted (the
/// operator may want one fixed host), but it then yields the same host for every backend and all
/// but the first are refused.
pub fn validate_host_template(template: &str) -> Result<(), NamingError> {
    parse_template(template).map(|_| ())
}

/// The host label (the part under the domain) for one backend. Values are inserted raw and the
/// whole result sanitized once, so that a long project name is shortened with a hash of the
/// complete rendered string and two backends never share a label by truncation.
pub fn render_host_label(
    template: &str,
    service: &str,
    port: u16,
    project: &str,
    pod: &str,
) -> Result<String, NamingError> {
    let mut raw = String::new();
    for piece in parse_template(template)? {
        match piece {
            Piece::Literal(text) => raw.push_str(text),
            Piece::Service => raw.push_str(service),
            Piece::Port => raw.push_str(&port.to_string()),
            Piece::Project => raw.push_str(&host_project(project)),
            Piece::Pod => raw.push_str(pod),
        }
    }
    Ok(dns_label(&raw))
}

/// The project as `{project}` puts it into a template host: the name itself when sanitizing
/// keeps it as it is (`demochat`, `my-app`), else its sanitized form and a short hash of the raw
/// name (`my_app` -> `my-app-1a2b3c4d`). Sanitizing folds `my_app`, `my-app`, `My.App` and
/// `my--app` into one label: without the hash two such compositions of one pod would get the
/// same host, and the second would be refused as taken. A plain container's key (`/name`,
/// `--expose-plain-containers`) is judged by its name: the `/` only marks it as a container.
pub(crate) fn host_project(project: &str) -> String {
    let clean = sanitize(project);
    if clean == project.strip_prefix('/').unwrap_or(project) {
        return clean;
    }
    let hash = short_hash(project);
    if clean.is_empty() {
        hash
    } else {
        format!("{clean}-{hash}")
    }
}

/// One place of a [`HostShape`]: what the template can put there, after sanitizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    /// A letter or digit of the template's literal text (lowercased, as rendering does).
    Char(u8),
    /// A '-' of the literal text: a separator, which sanitizing collapses with its neighbours
    /// and drops at either end.
    Sep,
    /// `{port}`: the decimal form of a u16 (`0`..`65535`, no leading zero).
    Port,
    /// Any run of letters, digits and separators, none included: what `{service}` and
    /// `{project}` can become (their raw text may sanitize away entirely, e.g. `___`).
    Any,
    /// Exactly one letter or digit. `{pod}` is `Any Alnum Any`: a pod name is a Kubernetes name
    /// (`--pod-name` is checked at start-up), so it always leaves at least one letter or digit.
    Alnum,
}

/// Everything `--host-template` can render, for ANY pod, composition, service and port: the
/// *shape* of template hosts. A chosen host (`compose-ingress.host`, kompose hosts) whose label
/// matches it is refused, so that chosen hosts and template hosts are disjoint name spaces and
/// no composition can take the URL the template gives another composition or another pod.
///
/// Rendering inserts the raw values and sanitizes the whole ([`render_host_label`]), so the
/// shape follows what sanitizing does: literal text lowercased, every run of separators (a
/// literal '-', or whatever in a value is not a letter or digit) becomes one '-', and separators
/// at either end disappear. On top of that come the two other forms rendering has: a result
/// longer than 63 characters is cut and suffixed with a hash ([`dns_label`]: 53 or 54
/// characters of a render, '-', 8 hex digits), and an empty result becomes `x`.
///
/// The shape must be a superset of what the template renders (a property test renders random
/// inputs through it); it may be larger, at the price of refusing a few chosen hosts that no
/// template host could equal. Matching is a search over (place in the template, place in the
/// label, separator pending) with a visited set: linear in template length × label length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShape {
    atoms: Vec<Atom>,
}

impl HostShape {
    /// The shape of `template`; the same errors as [`validate_host_template`].
    pub fn of_template(template: &str) -> Result<Self, NamingError> {
        let mut atoms = Vec::new();
        for piece in parse_template(template)? {
            match piece {
                Piece::Literal(text) => {
                    for b in text.bytes() {
                        if b.is_ascii_alphanumeric() {
                            atoms.push(Atom::Char(b.to_ascii_lowercase()));
                        } else {
                            atoms.push(Atom::Sep);
                        }
                    }
                }
                Piece::Service | Piece::Project => atoms.push(Atom::Any),
                Piece::Port => atoms.push(Atom::Port),
                Piece::Pod => atoms.extend([Atom::Any, Atom::Alnum, Atom::Any]),
            }
        }
        Ok(Self { atoms })
    }

    /// Whether the template could render `label` for somebody.
    pub fn matches(&self, label: &str) -> bool {
        let h = label.as_bytes();
        if self.reaches(h, |atom, i| atom == self.atoms.len() && i == h.len()) {
            return true;
        }
        // An empty render becomes `x`.
        if label == "x" && self.reaches(&[], |atom, i| atom == self.atoms.len() && i == 0) {
            return true;
        }
        // A shortened render: `cut(render, 54)` (54 characters, or 53 when the cut left a
        // trailing '-') + '-' + 8 hex digits. Any prefix of a render will do.
        let n = h.len();
        if (MAX_LABEL_LEN - 1..=MAX_LABEL_LEN).contains(&n) {
            let (prefix, suffix) = h.split_at(n - HASH_SUFFIX_LEN);
            return suffix[0] == b'-'
                && suffix[1..]
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
                && self.reaches(prefix, |_, i| i == prefix.len());
        }
        false
    }

    /// Whether some way of rendering reaches a state (next atom, bytes of `h` produced) that
    /// `accept` takes. `h` is produced left to right; a separator is held back ("pending") until
    /// the next letter or digit, so that runs collapse and a trailing one is dropped.
    fn reaches(&self, h: &[u8], accept: impl Fn(usize, usize) -> bool) -> bool {
        let n = self.atoms.len();
        let index = |atom: usize, i: usize, pending: bool| {
            (atom * (h.len() + 1) + i) * 2 + usize::from(pending)
        };
        let mut seen = vec![false; (n + 1) * (h.len() + 1) * 2];
        let mut stack = vec![(0usize, 0usize, false)];
        while let Some((atom, i, pending)) = stack.pop() {
            let k = index(atom, i, pending);
            if seen[k] {
                continue;
            }
            seen[k] = true;
            if accept(atom, i) {
                return true;
            }
            let Some(&a) = self.atoms.get(atom) else {
                continue;
            };
            // Where the next letters or digits start in `h`: after the pending separator, unless
            // nothing was produced yet (a leading separator is dropped).
            let start = if pending && i > 0 {
                if h.get(i) != Some(&b'-') {
                    None
                } else {
                    Some(i + 1)
                }
            } else {
                Some(i)
            };
            let alnum_at = |j: usize| {
                h.get(j)
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            };
            match a {
                Atom::Char(c) => {
                    if let Some(j) = start.filter(|&j| h.get(j) == Some(&c)) {
                        stack.push((atom + 1, j + 1, false));
                    }
                }
                Atom::Sep => stack.push((atom + 1, i, true)),
                Atom::Port => {
                    if let Some(j) = start {
                        for len in 1..=5 {
                            let Some(digits) = h.get(j..j + len) else {
                                break;
                            };
                            if !digits.iter().all(u8::is_ascii_digit) {
                                break;
                            }
                            let canonical = std::str::from_utf8(digits)
                                .ok()
                                .and_then(|d| d.parse::<u16>().ok())
                                .is_some_and(|p| p.to_string().as_bytes() == digits);
                            if canonical {
                                stack.push((atom + 1, j + len, false));
                            }
                        }
                    }
                }
                Atom::Any => {
                    stack.push((atom + 1, i, pending));
                    if !pending {
                        stack.push((atom, i, true));
                    }
                    if let Some(j) = start.filter(|&j| alnum_at(j)) {
                        stack.push((atom, j + 1, false));
                    }
                }
                Atom::Alnum => {
                    if let Some(j) = start.filter(|&j| alnum_at(j)) {
                        stack.push((atom + 1, j + 1, false));
                    }
                }
            }
        }
        false
    }
}

/// Name of the Service and the route objects of one composition: unique per (pod, project),
/// readable (`ci-<project>-<pod>-<hash>`), an RFC 1035 label. The hash is always there, because
/// sanitizing alone maps `a_b` and `a-b` onto the same name. A long project name is shortened,
/// never the pod's: the admission guard (deploy/admission) tells a pod's objects, and the
/// Services its EndpointSlices and routes may name, by the `-<pod>-<hash>` that ends the name.
pub fn object_name(pod: &str, project: &str) -> String {
    let pod_part = sanitize(pod);
    let room = (MAX_LABEL_LEN - HASH_SUFFIX_LEN).saturating_sub("ci--".len() + pod_part.len());
    let base = sanitize(&format!("ci-{}-{pod_part}", cut(sanitize(project), room)));
    with_hash(base, &format!("{pod}/{project}"))
}

fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let alnum_ends = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && alnum_ends(s.as_bytes().first())
        && alnum_ends(s.as_bytes().last())
}

/// A Kubernetes label value for `raw`. Valid values are kept verbatim (so selectors stay
/// readable); anything else is sanitized and hashed, which keeps distinct pods/projects apart.
pub fn label_value(raw: &str) -> String {
    if is_label_value(raw) {
        return raw.to_string();
    }
    let mut base: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(MAX_LABEL_LEN - HASH_SUFFIX_LEN);
    let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(raw);
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// A Service port name (IANA_SVC_NAME: ≤ 15 chars, `[a-z0-9-]`, at least one letter). Derived
/// from (service, container port) only, so the Ingress can reference the port by name and stay
/// unchanged when dind picks another host port after a restart.
pub fn port_name(service: &str, container_port: u16) -> String {
    format!("p{}", hash_hex(&format!("{service}/{container_port}"), 10))
}

/// Name of the Lease that claims `host` cluster-wide: one name per host, so two pods racing for
/// the same host collide on an atomic create.
pub fn lease_name(host: &str) -> String {
    format!("ci-host-{}", hash_hex(host, 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn short_hash_is_8_hex_of_sha256() {
        // sha256("") = e3b0c442...
        assert_eq!(short_hash(""), "e3b0c442");
        assert_eq!(short_hash("abc"), "ba7816bf");
        assert_eq!(hash_hex("abc", 100).len(), 64);
    }

    #[test]
    fn dns_label_sanitizes() {
        assert_eq!(dns_label("Web_Front"), "web-front");
        assert_eq!(dns_label("--a__b--"), "a-b");
        assert_eq!(dns_label("héllo wörld"), "h-llo-w-rld");
        assert_eq!(dns_label(""), "x");
        assert_eq!(dns_label("___"), "x");
        assert_eq!(dns_label("abc-123"), "abc-123");
    }

    #[test]
    fn dns_label_truncates_with_hash_and_keeps_long_inputs_distinct() {
        let a = "a".repeat(100);
        let b = format!("{}b", "a".repeat(99));
        let la = dns_label(&a);
        let lb = dns_label(&b);
        assert!(la.len() <= 63 && lb.len() <= 63);
        assert_ne!(la, lb);
        assert!(is_dns_label(&la));
        assert!(la.ends_with(&format!("-{}", short_hash(&a))));
        // exactly 63 is kept verbatim
        let exact = "b".repeat(63);
        assert_eq!(dns_label(&exact), exact);
    }

    #[test]
    fn truncation_never_leaves_a_double_dash_before_the_hash() {
        let raw = format!("{}-{}", "a".repeat(53), "b".repeat(40));
        let label = dns_label(&raw);
        assert!(is_dns_label(&label));
        assert!(!label.contains("--"), "{label}");
    }

    #[test]
    fn is_dns_label_rules() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn host_label_under_domain() {
        let d = "composition.example.com";
        assert_eq!(
            host_label_under("web.composition.example.com", d).as_deref(),
            Some("web")
        );
        assert_eq!(
            host_label_under("WEB.Composition.Example.com", d).as_deref(),
            Some("web")
        );
        assert_eq!(host_label_under("a.b.composition.example.com", d), None);
        assert_eq!(host_label_under("composition.example.com", d), None);
        assert_eq!(host_label_under(".composition.example.com", d), None);
        assert_eq!(host_label_under("webcomposition.example.com", d), None);
        assert_eq!(host_label_under("web.evil.com", d), None);
        assert_eq!(
            host_label_under("web.composition.example.com.evil", d),
            None
        );
    }

    #[test]
    fn renders_default_template() {
        let l = render_host_label(
            "{service}-{port}-{project}-{pod}",
            "web",
            5000,
            "demochat",
            "runner-3",
        )
        .unwrap();
        assert_eq!(l, "web-5000-demochat-runner-3");
        assert_eq!(
            full_host(&l, "composition.example.com"),
            "web-5000-demochat-runner-3.composition.example.com"
        );
    }

    /// Project names that sanitizing folds together get distinct, stable hosts; a name that
    /// is its own sanitized form keeps its readable host (seen failing with the raw name put
    /// in: one host for all four).
    #[test]
    fn folded_project_names_get_distinct_hosts() {
        let host = |project: &str| {
            render_host_label(
                "{service}-{port}-{project}-{pod}",
                "web",
                80,
                project,
                "runner-0",
            )
            .unwrap()
        };
        let names = ["my-app", "my_app", "My.App", "my--app", "my_app_"];
        let hosts: BTreeSet<String> = names.iter().map(|n| host(n)).collect();
        assert_eq!(hosts.len(), names.len(), "{hosts:?}");
        assert_eq!(host("my-app"), "web-80-my-app-runner-0");
        assert_eq!(
            host("my_app"),
            format!("web-80-my-app-{}-runner-0", short_hash("my_app"))
        );
        assert_eq!(host("my_app"), host("my_app"), "stable");
        assert!(hosts.iter().all(|h| is_dns_label(h)));
        assert!(is_dns_label(&host("___")));
        // A plain container's key keeps the readable host its name gives (seen failing with
        // the key's '/' taken for a folded character: a hash in every plain container's host).
        assert_eq!(host("/plainweb"), "web-80-plainweb-runner-0");
        assert_ne!(host("/plain_web"), host("/plain-web"));
    }

    #[test]
    fn render_sanitizes_values_and_truncates_with_hash() {
        let l = render_host_label("{service}-{project}", "My_Web", 80, "proj", "p").unwrap();
        assert_eq!(l, "my-web-proj");
        let long_project = "p".repeat(70);
        let l1 =
            render_host_label("{service}-{port}-{project}", "web", 80, &long_project, "x").unwrap();
        let l2 =
            render_host_label("{service}-{port}-{project}", "web", 81, &long_project, "x").unwrap();
        assert!(is_dns_label(&l1) && is_dns_label(&l2));
        assert_ne!(l1, l2);
    }

    #[test]
    fn template_errors() {
        assert_eq!(validate_host_template(""), Err(NamingError::EmptyTemplate));
        assert!(matches!(
            validate_host_template("{service"),
            Err(NamingError::UnbalancedBrace { .. })
        ));
        assert!(matches!(
            validate_host_template("service}"),
            Err(NamingError::UnbalancedBrace { position: 7, .. })
        ));
        assert!(matches!(
            validate_host_template("{ser{vice}"),
            Err(NamingError::UnbalancedBrace { .. })
        ));
        assert_eq!(
            validate_host_template("{service}-{namespace}"),
            Err(NamingError::UnknownPlaceholder {
                template: "{service}-{namespace}".into(),
                name: "namespace".into()
            })
        );
        assert!(matches!(
            validate_host_template("{service}.{pod}"),
            Err(NamingError::ContainsDot { .. })
        ));
        assert!(matches!(
            validate_host_template("{service}_{pod}"),
            Err(NamingError::InvalidCharacter { ch: '_', .. })
        ));
        assert!(validate_host_template("static").is_ok());
        assert!(validate_host_template("ci-{pod}-{service}").is_ok());
        assert!(render_host_label("{x}", "a", 1, "b", "c").is_err());
        let msg = validate_host_template("{service}.{pod}")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("ONE DNS label"), "{msg}");
    }

    const DEFAULT: &str = "{service}-{port}-{project}-{pod}";

    fn shape(template: &str) -> HostShape {
        HostShape::of_template(template).unwrap()
    }

    #[test]
    fn default_shape_is_a_port_part_followed_by_more() {
        let s = shape(DEFAULT);
        for template_host in [
            "web-80-demo-runner-0",
            "web-5000-demochat-runner-3",
            // service and project may sanitize away; the pod always leaves something
            "80-x",
            "app-8080-x",
            "a-0-b",
            "app-3-x",
            "my-web-65535-a-b-c-d",
        ] {
            assert!(s.matches(template_host), "{template_host}");
        }
        for chosen in [
            "api-demo",
            "shop-v2",
            "release-2024",
            "web-8080",
            "app-v3-x",
            "myapp",
            "web-80",
            "web-080-x",
            "web-65536-x",
            "web-80x-y",
            "web--80-x",
            "x",
            "wait-k3-bench-wait",
        ] {
            assert!(!s.matches(chosen), "{chosen}");
        }
    }

    #[test]
    fn shape_covers_shortened_renders() {
        let s = shape(DEFAULT);
        let long = render_host_label(DEFAULT, "web", 80, &"p".repeat(70), "runner-0").unwrap();
        assert_eq!(long.len(), 63);
        assert!(s.matches(&long), "{long}");
        // a cut that leaves a trailing '-' gives 53 + 9 characters
        let project = format!("{}-{}", "p".repeat(46), "q".repeat(30));
        let short = render_host_label(DEFAULT, "web", 80, &project, "runner-0").unwrap();
        assert_eq!(short.len(), 62, "{short}");
        assert!(s.matches(&short), "{short}");
        // Any 62-63 character label that ends in '-' and 8 hex digits could be one.
        let hashed = format!("{}-deadbeef", "a".repeat(54));
        assert!(s.matches(&hashed));
        assert!(!s.matches(&format!("{}-deadbeeg", "a".repeat(54))));
        assert!(!s.matches(&format!("{}-deadbeef", "a".repeat(52))));
        // ... unless no render starts like it.
        let fixed = shape("ci-{service}");
        assert!(fixed.matches(&format!("ci-{}-deadbeef", "a".repeat(51))));
        assert!(!fixed.matches(&format!("cx-{}-deadbeef", "a".repeat(51))));
    }

    #[test]
    fn shape_follows_sanitizing_of_literals() {
        let s = shape("CI--{service}-");
        assert!(s.matches("ci-web"));
        assert!(s.matches("ci"));
        assert!(!s.matches("ciweb"));
        assert!(!s.matches("cx-web"));
        let fixed = shape("static");
        assert!(fixed.matches("static"));
        assert!(!fixed.matches("static-1"));
        let glued = shape("{service}{port}");
        assert!(glued.matches("web80") && glued.matches("web-80") && glued.matches("80"));
        assert!(!glued.matches("web"));
        // A template that can render nothing renders `x`.
        assert!(shape("-").matches("x"));
        assert!(!shape("-").matches("y"));
        assert!(!shape("a-{port}").matches("x"));
        // A template that is one free placeholder covers every label without "--".
        let any = shape("{service}");
        assert!(any.matches("anything-at-all") && any.matches("x"));
        assert!(!any.matches("xn--80ak6aa92e"));
    }

    #[test]
    fn shape_matches_what_the_template_renders() {
        let templates = [
            DEFAULT,
            "{pod}-{service}",
            "ci-{project}{port}x",
            "{port}{port}",
            "-{pod}-",
            "a{service}b{project}c",
        ];
        let values = ["web", "", "___", "My_Web", "a-b", "8080", "ü", "-x-", "9"];
        let pods = ["runner-0", "a", "r.b-1", "0"];
        for template in templates {
            let s = shape(template);
            for service in values {
                for project in values {
                    for pod in pods {
                        for port in [0, 7, 80, 65535] {
                            let l =
                                render_host_label(template, service, port, project, pod).unwrap();
                            assert!(
                                s.matches(&l),
                                "{template} {service:?} {project:?} {pod:?} {port}: {l}"
                            );
                        }
                    }
                }
            }
        }
        assert!(HostShape::of_template("{x}").is_err());
    }

    #[test]
    fn object_name_is_deterministic_unique_and_rfc1035() {
        let n = object_name("runner-3", "demochat");
        assert!(n.starts_with("ci-demochat-runner-3-"), "{n}");
        assert_eq!(n, object_name("runner-3", "demochat"));
        assert_ne!(
            object_name("runner-3", "a_b"),
            object_name("runner-3", "a-b")
        );
        assert_ne!(object_name("r", "ab"), object_name("ra", "b"));
        let long = object_name(&"p".repeat(200), &"Q".repeat(200));
        assert!(long.len() <= 63 && is_dns_label(&long), "{long}");
        assert!(long.starts_with("ci-"));
    }

    #[test]
    fn object_name_keeps_the_pod_when_the_project_is_shortened() {
        // What the admission guard matches: ci-[<project>-]<pod>-<8 hex>.
        let ends_with_pod = |name: &str, pod: &str| {
            let (base, hash) = name.split_at(name.len() - HASH_SUFFIX_LEN);
            hash.len() == 9
                && hash[1..].bytes().all(|b| b.is_ascii_hexdigit())
                && base.starts_with("ci-")
                && base.ends_with(&format!("-{pod}"))
        };
        for project in [
            "demo",
            "",
            "___",
            &"long-project-".repeat(10),
            &"Q_".repeat(100),
        ] {
            let name = object_name("runner-12", project);
            assert!(name.len() <= 63 && is_dns_label(&name), "{name}");
            assert!(ends_with_pod(&name, "runner-12"), "{project:?}: {name}");
        }
        // Names that fitted are unchanged (no object of an upgraded sidecar is renamed).
        assert_eq!(
            object_name("runner-3", "demochat"),
            format!("ci-demochat-runner-3-{}", short_hash("runner-3/demochat"))
        );
        // Two long projects that share a prefix stay apart.
        let a = "a".repeat(80);
        assert_ne!(
            object_name("runner-0", &format!("{a}1")),
            object_name("runner-0", &format!("{a}2"))
        );
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("runner-3"), "runner-3");
        assert_eq!(label_value("My_Proj.1"), "My_Proj.1");
        let v = label_value("bad value!");
        assert!(v.starts_with("bad-value-"), "{v}");
        assert!(is_label_value(&v));
        let long = label_value(&"a".repeat(100));
        assert!(is_label_value(&long) && long.len() <= 63);
        assert_ne!(label_value("_a"), label_value("-a"));
        assert!(is_label_value(&label_value("ü")));
    }

    #[test]
    fn port_names_are_iana_svc_names_and_stable() {
        let n = port_name("web", 80);
        assert_eq!(n.len(), 11);
        assert!(n.starts_with('p'));
        assert!(is_dns_label(&n));
        assert_eq!(n, port_name("web", 80));
        assert_ne!(n, port_name("web", 81));
        assert_ne!(n, port_name("api", 80));
    }

    #[test]
    fn lease_names() {
        let n = lease_name("web.example.com");
        assert_eq!(n.len(), "ci-host-".len() + 16);
        assert!(is_dns_label(&n));
        assert_ne!(n, lease_name("api.example.com"));
    }
}
