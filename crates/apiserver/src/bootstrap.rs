//! Bootstrap tokens, as Kubernetes has them: `<id>.<secret>` checked against the Secret
//! `kube-system/bootstrap-token-<id>`, authenticating `system:bootstrap:<id>` in group
//! `system:bootstrappers`, which may only ask for node certificates.

use axum::http::Method;
use base64::Engine;
use serde_json::Value;
use skiff_api::kinds;
use skiff_api::object::Lookup;

use crate::registry::{Registry, Target};
use crate::status::ApiError;
use crate::tls::Identity;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const GROUP: &str = "system:bootstrappers";

/// The id and secret of a well-formed token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn data(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret.lookup(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether the token Secret `secret` accepts `token_secret` now.
pub fn accepts(secret: &Value, token_secret: &str, now: jiff::Timestamp) -> bool {
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
        || data(secret, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return false;
    }
    let expired = data(secret, "expiration")
        .map(|e| e.parse::<jiff::Timestamp>().map_or(true, |at| at <= now))
        .unwrap_or(false);
    let stored = data(secret, "token-secret").unwrap_or_default();
    // Compared in full whatever differs first: the time taken says nothing of the secret.
    let same = stored.len() == token_secret.len()
        && stored
            .bytes()
            .zip(token_secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same && !expired
}

/// The identity a bearer token stands for, if it is a valid bootstrap token.
pub async fn authenticate(registry: &Registry, token: &str) -> Option<Identity> {
    let (id, token_secret) = parse(token)?;
    let secrets = kinds::find("", "v1", "secrets").expect("secrets are served");
    let name = format!("bootstrap-token-{id}");
    let secret = registry
        .get(&Target {
            kind: secrets,
            namespace: Some("kube-system"),
            name: &name,
        })
        .await
        .ok()?;
    accepts(&secret, token_secret, jiff::Timestamp::now()).then(|| Identity {
        user: format!("system:bootstrap:{id}"),
        groups: vec![GROUP.into(), "system:authenticated".into()],
    })
}

/// What a bootstrap identity may do: create and read CertificateSigningRequests, and read
/// discovery.
pub fn authorize(who: &Identity, method: &Method, path: &str) -> Result<(), ApiError> {
    const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let reading = *method == Method::GET;
    let allowed = match path.strip_prefix(CSRS) {
        Some("") => reading || *method == Method::POST,
        Some(rest) => reading && rest.starts_with('/') && !rest[1..].contains('/'),
        None => reading && matches!(path, "/api" | "/apis" | "/apis/certificates.k8s.io/v1"),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "User {:?} cannot {} {path}: a bootstrap token may only create and read certificatesigningrequests",
                who.user,
                method.as_str().to_lowercase()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn tokens_are_checked_against_their_secret() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse("abcdef.0123"), None);
        assert_eq!(parse("abcdef0123456789abcdef"), None);
        let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let secret = |expiration: &str, usage: &str| {
            json!({"type": SECRET_TYPE, "data": {
                "token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64(usage), "expiration": b64(expiration)}})
        };
        assert!(accepts(
            &secret("2026-12-01T00:00:00Z", "true"),
            "0123456789abcdef",
            now
        ));
        assert!(!accepts(
            &secret("2026-12-01T00:00:00Z", "true"),
            "0123456789abcdeg",
            now
        ));
        assert!(!accepts(
            &secret("2026-11-30T11:00:00Z", "true"),
            "0123456789abcdef",
            now
        ));
        assert!(!accepts(
            &secret("2026-12-01T00:00:00Z", "false"),
            "0123456789abcdef",
            now
        ));
        let mut opaque = secret("2026-12-01T00:00:00Z", "true");
        opaque["type"] = json!("Opaque");
        assert!(!accepts(&opaque, "0123456789abcdef", now));
    }

    #[test]
    fn bootstrappers_may_only_ask_for_certificates() {
        let who = Identity {
            user: "system:bootstrap:abcdef".into(),
            groups: vec![GROUP.into()],
        };
        let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        assert!(authorize(&who, &Method::POST, csrs).is_ok());
        assert!(authorize(&who, &Method::GET, csrs).is_ok());
        assert!(authorize(&who, &Method::GET, &format!("{csrs}/node-csr-x")).is_ok());
        for (method, path) in [
            (Method::PUT, format!("{csrs}/node-csr-x/approval")),
            (Method::DELETE, format!("{csrs}/node-csr-x")),
            (Method::GET, "/api/v1/secrets".to_string()),
            (Method::POST, "/api/v1/namespaces/default/pods".to_string()),
        ] {
            let err = authorize(&who, &method, &path).unwrap_err();
            assert_eq!(err.code, 403, "{method} {path}");
        }
    }
}
