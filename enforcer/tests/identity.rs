//! Header attacks, JWT checks and traffic policy, through the real binary in front of a real echo
//! application: the application must only ever see values the enforcer validated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};

#[test]
fn header_attacks_never_reach_the_application() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &[]);
    let refused: &[(&str, &[&str])] = &[
        ("missing", &[]),
        ("duplicate", &["X-Tenant-ID: acme", "X-Tenant-ID: acme"]),
        (
            "duplicate, mixed case",
            &["X-Tenant-ID: acme", "x-tenant-id: globex"],
        ),
        ("comma joined", &["X-Tenant-ID: acme,globex"]),
        ("comma joined with space", &["X-Tenant-ID: acme, acme"]),
        ("empty", &["X-Tenant-ID: "]),
        ("alias alone", &["X_Tenant_ID: acme"]),
        (
            "alias beside the real one",
            &["X-Tenant-ID: acme", "X_Tenant_ID: globex"],
        ),
        ("half alias", &["X-Tenant_ID: acme"]),
        ("value in upper case", &["X-Tenant-ID: ACME"]),
        ("unknown tenant", &["X-Tenant-ID: nobody"]),
    ];
    for (what, headers) in refused {
        let (status, h, body) = get(e.addr, "/", headers);
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            header(&h, "content-type"),
            Some("application/json"),
            "{what}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "{what}: {body}"
        );
        assert!(
            body.find("\"path\"").is_none(),
            "{what}: the application answered: {body}"
        );
    }
    let (_, _, body) = get(e.addr, "/", &["X-Tenant-ID: nobody"]);
    assert!(body.contains("unknown_tenant"), "{body}");

    // Accepted, with every spoofable header replaced by the validated values.
    let (status, _, body) = get(
        e.addr,
        "/orders",
        &[
            "x-TENANT-id: acme",
            "X-Tenant-Tier: free",
            "x_tenant_tier: free",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let seen = seen(&body);
    assert_eq!(seen["path"], "/orders");
    assert_eq!(seen["headers"]["x-tenant-id"], serde_json::json!(["acme"]));
    assert_eq!(
        seen["headers"]["x-tenant-tier"],
        serde_json::json!(["enterprise"])
    );
    assert!(seen["headers"].get("x_tenant_tier").is_none(), "{body}");
}

#[test]
fn policy_allows_own_tenant_and_denies_others_and_suspended() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &[]);
    let (status, h, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 200, "{body}");
    assert!(header(&h, "ratelimit-limit").is_some(), "{h:?}");
    let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: globex"]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"error\":\"forbidden\""), "{body}");
    assert!(
        body.contains("a tenant may only call its own services"),
        "{body}"
    );

    // A shared service admits other tenants, but never a suspended one.
    let shared = Enforcer::start("acme", app, &["--shared"]);
    assert_eq!(get(shared.addr, "/", &["X-Tenant-ID: globex"]).0, 200);
    let (status, _, body) = get(shared.addr, "/", &["X-Tenant-ID: initech"]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("suspended"), "{body}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[test]
fn jwt_is_verified_with_a_pinned_algorithm() {
    let dir = temp_dir("jwt");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "s3cret-for-tests\n").unwrap();
    let secret = b"s3cret-for-tests";
    let app = echo_upstream();
    let e = Enforcer::start(
        "acme",
        app,
        &["--jwt-secret-file", secret_file.to_str().unwrap()],
    );
    let call = |tok: Option<String>| {
        let auth = tok.map(|t| format!("Authorization: Bearer {t}"));
        let mut headers = vec!["X-Tenant-ID: acme"];
        if let Some(a) = &auth {
            headers.push(a);
        }
        get(e.addr, "/", &headers)
    };
    use jsonwebtoken::Algorithm::*;
    let good = serde_json::json!({"tenant": "acme", "exp": now() + 600});
    let (status, _, body) = call(Some(token(HS256, secret, good.clone())));
    assert_eq!(status, 200, "good token: {body}");
    // The application does not need the token's claims from us, only the validated tenant.
    assert_eq!(
        seen(&body)["headers"]["x-tenant-id"],
        serde_json::json!(["acme"])
    );

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("wrong algorithm", Some(token(HS384, secret, good.clone()))),
        ("wrong secret", Some(token(HS256, b"other", good.clone()))),
        (
            "expired",
            Some(token(
                HS256,
                secret,
                serde_json::json!({"tenant": "acme", "exp": now() - 10}),
            )),
        ),
        (
            "not yet valid",
            Some(token(
                HS256,
                secret,
                serde_json::json!({"tenant": "acme", "exp": now() + 600, "nbf": now() + 300}),
            )),
        ),
        (
            "nbf as a string",
            Some(token(
                HS256,
                secret,
                serde_json::json!({"tenant": "acme", "exp": now() + 600, "nbf": "0"}),
            )),
        ),
        (
            "exp as a string",
            Some(token(
                HS256,
                secret,
                serde_json::json!({"tenant": "acme", "exp": (now() + 600).to_string()}),
            )),
        ),
        (
            "no exp",
            Some(token(HS256, secret, serde_json::json!({"tenant": "acme"}))),
        ),
        (
            "other tenant's claim",
            Some(token(
                HS256,
                secret,
                serde_json::json!({"tenant": "globex", "exp": now() + 600}),
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(serde_json::to_string(&good).unwrap().as_bytes())
            )),
        ),
    ];
    for (what, tok) in cases {
        let (status, _, body) = call(tok);
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains("invalid_token"), "{what}: {body}");
    }
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn es256_tokens_are_verified_from_a_jwks_file() {
    // Key pair made once with `openssl ecparam -name prime256v1 -genkey`; the private key signs
    // here, the enforcer only gets the public JWK.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let private = std::fs::read(fixtures.join("es256-private.pem")).unwrap();
    let app = echo_upstream();
    let e = Enforcer::start(
        "acme",
        app,
        &[
            "--jwt-jwks-file",
            fixtures.join("es256.jwks.json").to_str().unwrap(),
            "--jwt-algorithm",
            "ES256",
        ],
    );
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("test-es256".into());
    let tok = encode(
        &header,
        &serde_json::json!({"tenant": "acme", "exp": now() + 600}),
        &key,
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {tok}");
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme", &auth]).0, 200);
    // The same claims as HS256, keyed with the public key's bytes: the classic confusion attack.
    let forged = token(
        jsonwebtoken::Algorithm::HS256,
        &std::fs::read(fixtures.join("es256.jwks.json")).unwrap(),
        serde_json::json!({"tenant": "acme", "exp": now() + 600}),
    );
    let auth = format!("Authorization: Bearer {forged}");
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme", &auth]).0, 401);
}

#[test]
fn as_injected_the_jwks_comes_inline_and_the_header_alone_no_longer_identifies() {
    // What the webhook injects with --sidecar-jwt-jwks-file: the public JWKS itself, in env.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let jwks = std::fs::read_to_string(fixtures.join("es256.jwks.json")).unwrap();
    let app = echo_upstream();
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("TENANTRY_JWT_JWKS", &jwks)
        .env("TENANTRY_JWT_ALGORITHM", "ES256")
        .env("TENANTRY_JWT_TENANT_CLAIM", "tenant");
    let e = Enforcer::start_with("acme", app, &[], cmd);
    assert_eq!(
        get(e.addr, "/", &["X-Tenant-ID: acme"]).0,
        401,
        "the header alone"
    );
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixtures.join("es256-private.pem")).unwrap())
        .unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("test-es256".into());
    let sign = |tenant: &str| {
        encode(
            &header,
            &serde_json::json!({"tenant": tenant, "exp": now() + 600}),
            &key,
        )
        .unwrap()
    };
    let acme = format!("Authorization: Bearer {}", sign("acme"));
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme", &acme]).0, 200);
    // A token for globex cannot claim acme's header, nor acme's token globex's.
    let globex = format!("Authorization: Bearer {}", sign("globex"));
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme", &globex]).0, 401);
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: globex", &acme]).0, 401);
}
