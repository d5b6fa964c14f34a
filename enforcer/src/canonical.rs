//! One canonical request: what policy decides on is exactly what the application receives.
//!
//! - **Paths** are normalised per RFC 3986 before policy sees them, and the normalised path is what
//!   is forwarded: percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`),
//!   other encodings are kept with uppercase hex, dot segments are removed (`/x/../admin`,
//!   `/./admin`, `/%2e/admin`), and empty segments collapse (`//admin`). An encoded `/` or `\`,
//!   a raw `\`, and an invalid or truncated `%` escape are refused (400): applications disagree
//!   on what they mean, so no single reading is safe to forward.
//! - **Identity headers** in any spelling (`X-Tenant-ID`, `X_Tenant-Id`, `x-tenant_tier`, …) are
//!   the enforcer's alone: the tenant header is validated (aliases refused), the tier header in
//!   every spelling removed, and both removed from trailers too.
//! - **Forwarding headers** (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are set from the
//!   connection, not taken from the client, unless the peer is a trusted proxy; headers that make
//!   frameworks route or dispatch differently from what policy saw (`X-Original-URL`,
//!   `X-Rewrite-URL`, `X-HTTP-Method-Override`, …) are removed.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use hyper::body::Frame;
use thiserror::Error;

/// Why a path was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PathError {
    #[error("the path contains an invalid percent-encoding")]
    BadEncoding,
    #[error("the path contains an encoded `/` or `\\`")]
    EncodedSeparator,
    #[error("the path contains a `\\`")]
    Backslash,
    #[error("the path must start with `/`")]
    NotAbsolute,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The canonical form of a request path (without its query).
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        // `*` (OPTIONS) and authority-form never reach a proxied application.
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw) {
        return Ok(raw.to_owned());
    }
    normalize(raw)
}

/// Whether `normalize` would give `raw` back unchanged: ASCII, no escapes or backslashes, no
/// empty segment but a trailing one, no dot segment. Most paths are; they skip the rewrite.
fn is_canonical(raw: &str) -> bool {
    let without_trailing_slash = raw.strip_suffix('/').unwrap_or(raw);
    raw.is_ascii()
        && !raw.contains(['%', '\\'])
        && without_trailing_slash
            .split('/')
            .skip(1)
            .all(|segment| !matches!(segment, "" | "." | ".."))
}

/// The rewrite `normalize_path` describes, for a path that starts with `/`.
fn normalize(raw: &str) -> Result<String, PathError> {
    // 1. Percent-encodings: decode the unreserved, refuse separators, normalise the rest.
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let b = h * 16 + l;
                if b == b'/' || b == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if is_unreserved(b) {
                    decoded.push(char::from(b));
                } else {
                    decoded.push_str(&format!("%{b:02X}"));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // The rest is ASCII as hyper accepts it; copy it through.
                decoded.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    // 2. Dot segments and empty segments (RFC 3986 §5.2.4, with `//` collapsed).
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

/// Which identity header a name spells, `-` and `_` alike (names are lowercase in `http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeader {
    Tenant,
    Tier,
}

pub fn identity_spelling(name: &str) -> Option<IdentityHeader> {
    let same = |canonical: &str| {
        name.len() == canonical.len()
            && name
                .bytes()
                .zip(canonical.bytes())
                .all(|(a, b)| a == b || (b == b'-' && a == b'_'))
    };
    if same(crate::identity::TENANT_HEADER) {
        Some(IdentityHeader::Tenant)
    } else if same(crate::identity::TIER_HEADER) {
        Some(IdentityHeader::Tier)
    } else {
        None
    }
}

/// The names of the headers present that `doomed` picks, each looked at once. Removing by name
/// instead parses and hashes every name asked for, present or not: the dozen names a request is
/// scrubbed of cost more that way than its policy check (~9 k instructions per request).
/// Allocates nothing when nothing is picked, the common case.
pub fn names_where(headers: &HeaderMap, doomed: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    headers.keys().filter(|n| doomed(n)).cloned().collect()
}

/// Removes every value of each of `names`.
pub fn remove_all(headers: &mut HeaderMap, names: Vec<HeaderName>) {
    for name in names {
        headers.remove(name);
    }
}

/// Removes every spelling of both identity headers.
pub fn strip_identity(headers: &mut HeaderMap) {
    let names = names_where(headers, |n| identity_spelling(n.as_str()).is_some());
    remove_all(headers, names);
}

const TENANT: HeaderName = HeaderName::from_static(crate::identity::TENANT_HEADER);
const TIER: HeaderName = HeaderName::from_static(crate::identity::TIER_HEADER);

/// Sets both identity headers to the enforcer's values, every other spelling removed. (The
/// canonical spellings need no removal: inserting replaces all their values.)
pub fn set_identity(headers: &mut HeaderMap, tenant: HeaderValue, tier: HeaderValue) {
    let aliases = names_where(headers, |n| {
        *n != TENANT && *n != TIER && identity_spelling(n.as_str()).is_some()
    });
    remove_all(headers, aliases);
    headers.insert(TENANT, tenant);
    headers.insert(TIER, tier);
}

/// Trailers may not carry an identity either: removed from every trailer frame.
pub fn strip_trailer_identity(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            strip_identity(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// Client-set forwarding information, replaced by what the enforcer knows.
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers some frameworks use to route or dispatch differently from the request line: policy
/// would decide on one path or method and the application act on another. Always removed.
const OVERRIDES: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// Sets the forwarding headers from the connection: `X-Forwarded-For` is the peer (appended to
/// the client's list when the peer is a trusted proxy, whose other forwarding headers are then
/// kept too), `X-Forwarded-Proto` is `http` (the enforcer listens in cleartext), and
/// `X-Forwarded-Host` the request's host.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted_peer: bool,
    host: Option<HeaderValue>,
) {
    let doomed = names_where(headers, |n| {
        let n = n.as_str();
        OVERRIDES.contains(&n) || (!trusted_peer && FORWARDING.contains(&n))
    });
    remove_all(headers, doomed);
    let prior = if trusted_peer {
        let values: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    } else {
        None
    };
    let chain = match prior {
        Some(list) => {
            HeaderValue::from_str(&format!("{list}, {}", peer.to_str().unwrap_or_default())).ok()
        }
        None => Some(peer.clone()),
    };
    if let Some(v) = chain {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !trusted_peer || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if (!trusted_peer || !headers.contains_key(&X_FORWARDED_HOST))
        && let Some(v) = host
    {
        headers.insert(X_FORWARDED_HOST, v);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths_that_reach_the_same_route_become_the_same_path() {
        for (raw, want) in [
            ("/admin/users", "/admin/users"),
            ("/%61dmin/users", "/admin/users"),
            ("/%41dmin", "/Admin"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/%2e/admin", "/admin"),
            ("/%2E%2E/admin", "/admin"),
            ("/a/b/../../admin/", "/admin/"),
            ("/../../admin", "/admin"),
            ("/", "/"),
            ("/..", "/"),
            ("/a/.", "/a/"),
            ("/a%20b/%7euser", "/a%20b/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    /// The shortcut for canonical paths gives what the rewrite gives, over every path of up to
    /// four characters from the ones that matter.
    #[test]
    fn paths_taken_as_canonical_are_what_the_rewrite_makes() {
        let alphabet = ['/', '.', 'a', '%', '2', 'e', '\\', '~'];
        let mut level = vec![String::from("/")];
        let mut shortcut = 0;
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|p| alphabet.map(|c| format!("{p}{c}")))
                .collect();
            for p in level.iter().filter(|p| is_canonical(p)) {
                shortcut += 1;
                assert_eq!(normalize(p).as_deref(), Ok(p.as_str()), "{p}");
            }
        }
        assert!(shortcut > 100, "{shortcut}");
        assert!(!is_canonical("/caf\u{e9}") && !is_canonical("/a//b") && !is_canonical("/a/./b"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (raw, want) in [
            ("/admin%2fusers", PathError::EncodedSeparator),
            ("/admin%2F..%2Fusers", PathError::EncodedSeparator),
            ("/admin%5cusers", PathError::EncodedSeparator),
            ("/admin\\users", PathError::Backslash),
            ("/admin%", PathError::BadEncoding),
            ("/admin%4", PathError::BadEncoding),
            ("/admin%zz", PathError::BadEncoding),
            ("*", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn every_spelling_of_the_identity_headers_is_recognised() {
        for name in ["x-tenant-id", "x_tenant_id", "x-tenant_id", "x_tenant-id"] {
            assert_eq!(
                identity_spelling(name),
                Some(IdentityHeader::Tenant),
                "{name}"
            );
        }
        for name in [
            "x-tenant-tier",
            "x_tenant_tier",
            "x-tenant_tier",
            "x_tenant-tier",
        ] {
            assert_eq!(
                identity_spelling(name),
                Some(IdentityHeader::Tier),
                "{name}"
            );
        }
        for name in ["x-tenant-ids", "x-tenantid", "x-tenant-tie", "tenant-id"] {
            assert_eq!(identity_spelling(name), None, "{name}");
        }
    }

    #[test]
    fn forwarding_comes_from_the_connection_unless_the_peer_is_trusted() {
        let peer = HeaderValue::from_static("10.0.0.7");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        let mut untrusted = h.clone();
        set_forwarding(
            &mut untrusted,
            &peer,
            false,
            Some(HeaderValue::from_static("shop.example")),
        );
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.7");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "shop.example");
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-http-method-override",
            "x-original-url",
        ] {
            assert!(!untrusted.contains_key(gone), "{gone}");
        }
        let mut trusted = h;
        set_forwarding(
            &mut trusted,
            &peer,
            true,
            Some(HeaderValue::from_static("shop.example")),
        );
        assert_eq!(trusted["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(trusted["forwarded"], "for=1.2.3.4");
        assert!(!trusted.contains_key("x-http-method-override"));
    }
}
