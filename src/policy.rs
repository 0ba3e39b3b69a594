//! The operator's access policies (`--access-policies FILE`, a ConfigMap in deploy/): named sets
//! of what a policy adds to a composition's route, picked per composition by the
//! `compose-ingress.access` label. Parsed and validated once at start-up (pure); a bad file stops
//! the sidecar with one line naming the policy, the field and the fix, before anything is
//! touched. Labels only ever pick a name: everything the route gets comes from this file.
//!
//! ```yaml
//! default: sso          # the policy of a composition that names none; absent: public
//! allowPublic: false    # whether `public` (no policy) may be the default or chosen by label
//! policies:
//!   sso:
//!     traefikMiddlewares: [sso-forward-auth]     # Traefik Middlewares in the runner namespace
//!   office:
//!     traefikMiddlewares: [office-ip-allow-list]
//!   nginx-basic:
//!     ingressAnnotations:                        # other Ingress controllers: their annotations
//!       nginx.org/basic-auth-secret: ci-basic-auth
//!     httpRouteFilters:                          # Gateway API filters, on every route rule
//!     - type: RequestHeaderModifier
//!       requestHeaderModifier: {set: [{name: X-Policy, value: nginx-basic}]}
//!   login:                                       # pod scope: the sidecar's proxy enforces these
//!     basicAuth: {htpasswdFile: /etc/compose-ingress/htpasswd, realm: previews}
//!     ipAllowList: [192.0.2.0/24]
//! ```
//!
//! Which entries a scope can carry is checked at start-up (src/config.rs): the controller's
//! (middlewares, annotations, filters) in composition scope, the proxy's (basic auth, allow-list)
//! in pod scope.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{AccessPolicies, AccessPolicy, BasicAuthPolicy, Cidr, Htpasswd, PUBLIC_POLICY};
use crate::naming;
use crate::objects::{PROJECT_NAME_ANNOTATION, TRAEFIK_MIDDLEWARES_ANNOTATION};

/// Most policies in one file, and most entries in one policy: the file is the operator's, but
/// every entry ends up on routes.
const MAX_POLICIES: usize = 100;
const MAX_ENTRIES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyError {
    #[error("access policies: {0}; see the schema in docs/policies.md or src/policy.rs")]
    Invalid(String),
    #[error(
        "access policies: cannot read {path}: {source}; mount the ConfigMap there or drop --access-policies"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    allow_public: bool,
    #[serde(default)]
    policies: BTreeMap<String, Policy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Policy {
    #[serde(default)]
    traefik_middlewares: Vec<String>,
    #[serde(default)]
    ingress_annotations: BTreeMap<String, String>,
    #[serde(default)]
    http_route_filters: Vec<serde_json::Value>,
    #[serde(default)]
    basic_auth: Option<BasicAuthEntry>,
    #[serde(default)]
    ip_allow_list: Vec<String>,
}

/// `basicAuth:` of a policy (pod scope: the proxy checks it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BasicAuthEntry {
    htpasswd_file: String,
    #[serde(default)]
    realm: Option<String>,
}

/// Reads a file the policy file names (an htpasswd file): the I/O edge of [`parse`], so that
/// tests hand in the text.
type ReadFile<'a> = &'a dyn Fn(&str) -> std::io::Result<String>;

fn invalid(msg: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(msg.into())
}

/// Reads and validates the policy file at `path`.
pub(crate) fn load(path: &str) -> Result<AccessPolicies, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_string(),
        source,
    })?;
    parse_with(&text, &|p| std::fs::read_to_string(p))
}

/// Parses and validates a policy file's text (one that names no other file).
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<AccessPolicies, PolicyError> {
    parse_with(text, &|p| {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{p}: no files in this test"),
        ))
    })
}

/// Parses and validates a policy file's text; `read` reads the htpasswd files it names.
pub(crate) fn parse_with(text: &str, read: ReadFile<'_>) -> Result<AccessPolicies, PolicyError> {
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if file.policies.len() > MAX_POLICIES {
        return Err(invalid(format!(
            "{} policies, at most {MAX_POLICIES}",
            file.policies.len()
        )));
    }
    let mut policies = BTreeMap::new();
    for (name, p) in file.policies {
        if name == PUBLIC_POLICY || !naming::is_dns_label(&name) {
            return Err(invalid(format!(
                "policy name {name:?}: a policy name is a DNS label (a-z, 0-9, '-') other than `{PUBLIC_POLICY}`, which means no policy"
            )));
        }
        policies.insert(name.clone(), policy(&name, p, read)?);
    }
    let known = || {
        let mut names: Vec<&str> = policies.keys().map(String::as_str).collect();
        if file.allow_public {
            names.push(PUBLIC_POLICY);
        }
        names.join(", ")
    };
    let default = match file.default.as_deref() {
        None | Some(PUBLIC_POLICY) if !file.allow_public => {
            return Err(invalid(format!(
                "the default is `{PUBLIC_POLICY}` (no policy) but allowPublic is false; set `default:` to one of: {}",
                known()
            )));
        }
        None | Some(PUBLIC_POLICY) => None,
        Some(d) if policies.contains_key(d) => Some(d.to_string()),
        Some(d) => {
            return Err(invalid(format!(
                "default {d:?} is not a policy of the file; use one of: {}",
                known()
            )));
        }
    };
    Ok(AccessPolicies {
        default,
        allow_public: file.allow_public,
        policies,
    })
}

fn policy(name: &str, p: Policy, read: ReadFile<'_>) -> Result<AccessPolicy, PolicyError> {
    let entries = p.traefik_middlewares.len()
        + p.ingress_annotations.len()
        + p.http_route_filters.len()
        + p.ip_allow_list.len()
        + usize::from(p.basic_auth.is_some());
    if entries == 0 {
        return Err(invalid(format!(
            "policy `{name}` adds nothing to a route; give it traefikMiddlewares, ingressAnnotations or httpRouteFilters (composition scope), basicAuth or ipAllowList (pod scope), or use `{PUBLIC_POLICY}` with allowPublic: true"
        )));
    }
    if entries > MAX_ENTRIES {
        return Err(invalid(format!(
            "policy `{name}` has {entries} entries, at most {MAX_ENTRIES}"
        )));
    }
    for m in &p.traefik_middlewares {
        if !naming::is_dns_label(m) {
            return Err(invalid(format!(
                "policy `{name}`: traefikMiddlewares entry {m:?} is not a Middleware name (a DNS label); name a Middleware of the runner pods' namespace"
            )));
        }
    }
    for key in p.ingress_annotations.keys() {
        if !naming::is_annotation_key(key)
            || key.starts_with("compose-ingress/")
            || key == PROJECT_NAME_ANNOTATION
        {
            return Err(invalid(format!(
                "policy `{name}`: ingressAnnotations key {key:?} is not an annotation key the sidecar may set (prefix/name, not compose-ingress/*)"
            )));
        }
        if key == TRAEFIK_MIDDLEWARES_ANNOTATION {
            return Err(invalid(format!(
                "policy `{name}`: name Traefik Middlewares in traefikMiddlewares, not in the {TRAEFIK_MIDDLEWARES_ANNOTATION} annotation (the sidecar writes that one, with the rate limit's)"
            )));
        }
    }
    for f in &p.http_route_filters {
        if !f.get("type").is_some_and(serde_json::Value::is_string) {
            return Err(invalid(format!(
                "policy `{name}`: every httpRouteFilters entry is a Gateway API HTTPRouteFilter with a `type` (e.g. ExtensionRef, RequestHeaderModifier); got {f}"
            )));
        }
    }
    let ip_allow_list = p
        .ip_allow_list
        .iter()
        .map(|c| Cidr::parse(c).map_err(|e| invalid(format!("policy `{name}`: ipAllowList: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let basic_auth = p
        .basic_auth
        .map(|b| basic_auth(name, b, read))
        .transpose()?;
    Ok(AccessPolicy {
        traefik_middlewares: p.traefik_middlewares,
        ingress_annotations: p.ingress_annotations,
        http_route_filters: p.http_route_filters,
        basic_auth,
        ip_allow_list,
    })
}

/// A policy's basic auth: its htpasswd file read and checked now, at start-up.
fn basic_auth(
    name: &str,
    b: BasicAuthEntry,
    read: ReadFile<'_>,
) -> Result<BasicAuthPolicy, PolicyError> {
    let realm = b.realm.unwrap_or_else(|| name.to_string());
    // It is quoted in WWW-Authenticate: nothing that could end the quotes or the header.
    let realm_ok = !realm.is_empty()
        && realm.len() <= 64
        && realm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-_".contains(c));
    if !realm_ok {
        return Err(invalid(format!(
            "policy `{name}`: basicAuth realm {realm:?} must be 1 to 64 letters, digits, spaces, '.', '-' or '_'"
        )));
    }
    let text = read(&b.htpasswd_file).map_err(|e| {
        invalid(format!(
            "policy `{name}`: cannot read basicAuth htpasswdFile {:?}: {e}; mount the Secret there",
            b.htpasswd_file
        ))
    })?;
    let users = Htpasswd::parse(&text).map_err(|e| {
        invalid(format!(
            "policy `{name}`: basicAuth htpasswdFile {:?}: {e}",
            b.htpasswd_file
        ))
    })?;
    Ok(BasicAuthPolicy { realm, users })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
default: sso
policies:
  sso:
    traefikMiddlewares: [sso-auth]
  nginx-basic:
    ingressAnnotations: {nginx.org/basic-auth-secret: ci-basic-auth}
    httpRouteFilters:
    - {type: ExtensionRef, extensionRef: {group: traefik.io, kind: Middleware, name: basic}}
";

    #[test]
    fn a_good_file_parses() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.default.as_deref(), Some("sso"));
        assert!(!p.allow_public);
        assert_eq!(p.policies["sso"].traefik_middlewares, ["sso-auth"]);
        assert_eq!(
            p.policies["nginx-basic"].ingress_annotations["nginx.org/basic-auth-secret"],
            "ci-basic-auth"
        );
        let public = parse("allowPublic: true\npolicies: {a: {traefikMiddlewares: [m]}}").unwrap();
        assert_eq!(public.default, None);
        assert!(public.allow_public);
    }

    #[test]
    fn bad_files_are_refused_with_the_fix() {
        for (text, needle) in [
            (
                "policies: {a: {traefikMiddlewares: [m]}}",
                "allowPublic is false",
            ),
            (
                "default: public\npolicies: {a: {traefikMiddlewares: [m]}}",
                "set `default:`",
            ),
            (
                "default: b\npolicies: {a: {traefikMiddlewares: [m]}}",
                "use one of: a",
            ),
            ("default: a\npolicies: {a: {}}", "adds nothing"),
            (
                "default: a\npolicies: {A_: {traefikMiddlewares: [m]}}",
                "policy name",
            ),
            (
                "default: public\nallowPublic: true\npolicies: {public: {traefikMiddlewares: [m]}}",
                "other than `public`",
            ),
            (
                "default: a\npolicies: {a: {traefikMiddlewares: [\"ns/m\"]}}",
                "not a Middleware name",
            ),
            (
                "default: a\npolicies: {a: {ingressAnnotations: {compose-ingress/x: y}}}",
                "not an annotation key",
            ),
            (
                "default: a\npolicies: {a: {ingressAnnotations: {\"bad key\": y}}}",
                "not an annotation key",
            ),
            (
                "default: a\npolicies: {a: {ingressAnnotations: {traefik.ingress.kubernetes.io/router.middlewares: x}}}",
                "traefikMiddlewares",
            ),
            (
                "default: a\npolicies: {a: {httpRouteFilters: [{name: x}]}}",
                "`type`",
            ),
            (
                "default: a\npolicies: {a: {traefikMiddleware: [m]}}",
                "unknown field",
            ),
            ("defualt: a", "unknown field"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
