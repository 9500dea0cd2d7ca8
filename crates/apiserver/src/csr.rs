//! CertificateSigningRequests: who asked (stamped on creation from the authenticated identity),
//! the check of the request, the approval of node certificates (what kube-controller-manager's
//! approver does for kubelets), and signing approved requests with the cluster CA.

use base64::Engine;
use serde_json::{json, Value};
use skiff_api::kinds::Kind;
use skiff_api::object::Lookup;

use crate::registry::Target;
use crate::server::Api;
use crate::status::{ApiError, Cause};
use crate::tls::Identity;

/// Client certificates of nodes (kubelets).
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Serving certificates of nodes' endpoints.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Client certificates of anyone, approved by an administrator.
pub const API_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

pub fn is_csr(kind: &Kind) -> bool {
    kind.group == "certificates.k8s.io" && kind.kind == "CertificateSigningRequest"
}

/// What a PKCS#10 request asks for.
#[derive(Debug, Default, PartialEq)]
pub struct Requested {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Email addresses and URIs, which node certificates must not carry.
    pub other_names: usize,
}

/// Reads `spec.request` (base64 of a PEM request) and checks its signature.
pub fn requested(csr: &Value) -> Result<(String, Requested), String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    let encoded = csr
        .lookup("/spec/request")
        .and_then(Value::as_str)
        .ok_or("Required value")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "not a PEM text".to_string())?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("not a PKCS#10 request: {e}"))?;
    request
        .verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    let info = &request.certification_request_info;
    let text = |v: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        v.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let mut out = Requested {
        common_name: text(info.subject.iter_common_name().next()).unwrap_or_default(),
        organizations: info
            .subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        ..Requested::default()
    };
    for extension in request.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns_names.push(d.to_string()),
                    GeneralName::IPAddress(ip) => {
                        out.ip_addresses.push(match ip.len() {
                            4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                                .to_string(),
                            16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())
                                .to_string(),
                            _ => return Err("an IP address SAN of a bad length".into()),
                        })
                    }
                    _ => out.other_names += 1,
                }
            }
        }
    }
    Ok((pem, out))
}

/// Checks a new request and stamps who made it (`spec.username`, `spec.groups`), as the
/// server does whatever the client wrote there.
pub fn admit(obj: &mut Value, who: Option<&Identity>) -> Result<(), ApiError> {
    let name = obj
        .lookup("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let invalid = |field: &str, message: String| {
        ApiError::invalid(
            "CertificateSigningRequest",
            &name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message,
                field: field.into(),
            }],
        )
    };
    requested(obj).map_err(|e| invalid("spec.request", format!("Invalid value: {e}")))?;
    if obj
        .lookup("/spec/signerName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(invalid("spec.signerName", "Required value".into()));
    }
    let (user, mut groups) = who
        .map(|w| (w.user.clone(), w.groups.clone()))
        .unwrap_or_default();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    obj["spec"]["username"] = json!(user);
    obj["spec"]["groups"] = json!(groups);
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        // Approval and the certificate come from the approval subresource and the signer.
        status.clear();
    }
    Ok(())
}

/// What becomes of a pending request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Approved automatically, with the condition's message.
    Approve(&'static str),
    /// Left for an administrator (`kubectl certificate approve`).
    Wait,
}

fn strings(csr: &Value, pointer: &str) -> Vec<String> {
    csr.lookup(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes' rules for node certificates: a client certificate for `system:node:<name>` in
/// group `system:nodes`, asked by a bootstrap token or by that node itself; a serving
/// certificate with only DNS and IP names, asked by the node itself.
pub fn decide(csr: &Value, requested: &Requested) -> Decision {
    let signer = csr
        .lookup("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let username = csr
        .lookup("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let groups = strings(csr, "/spec/groups");
    let usages = strings(csr, "/spec/usages");
    let node = requested.common_name.starts_with("system:node:")
        && requested.common_name.len() > "system:node:".len()
        && requested.organizations == ["system:nodes"];
    let only = |allowed: &[&str], needed: &str| {
        usages.iter().all(|u| allowed.contains(&u.as_str())) && usages.iter().any(|u| u == needed)
    };
    match signer {
        KUBELET_CLIENT
            if node
                && requested.dns_names.is_empty()
                && requested.ip_addresses.is_empty()
                && requested.other_names == 0
                && only(
                    &["digital signature", "key encipherment", "client auth"],
                    "client auth",
                )
                && (groups.iter().any(|g| g == "system:bootstrappers")
                    || username == requested.common_name) =>
        {
            Decision::Approve(
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            )
        }
        KUBELET_SERVING
            if node
                && username == requested.common_name
                && !(requested.dns_names.is_empty() && requested.ip_addresses.is_empty())
                && requested.other_names == 0
                && only(
                    &["digital signature", "key encipherment", "server auth"],
                    "server auth",
                ) =>
        {
            Decision::Approve(
                "Auto approving self kubelet server certificate after SubjectAccessReview.",
            )
        }
        _ => Decision::Wait,
    }
}

fn condition(csr: &Value, kind: &str) -> bool {
    csr.lookup("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] != "False")
        })
}

/// Approves what the rules approve and signs what is approved, for the signers the cluster CA
/// serves. Runs after a request is created and after its approval changes.
pub async fn settle(api: &Api, kind: &'static Kind, name: &str) -> Result<(), ApiError> {
    let target = Target {
        kind,
        namespace: None,
        name,
    };
    let csr = api.registry.get(&target).await?;
    if csr.lookup("/status/certificate").is_some() || condition(&csr, "Denied") {
        return Ok(());
    }
    let Ok((pem, requested)) = requested(&csr) else {
        return Ok(());
    };
    let approved = condition(&csr, "Approved");
    if !approved {
        let Decision::Approve(message) = decide(&csr, &requested) else {
            return Ok(());
        };
        let now = skiff_api::object::timestamp(jiff::Timestamp::now());
        api.registry
            .modify(&target, |obj| {
                let conditions = obj["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut conditions = conditions;
                conditions.push(json!({
                    "type": "Approved", "status": "True", "reason": "AutoApproved",
                    "message": message, "lastUpdateTime": now, "lastTransitionTime": now,
                }));
                obj["status"]["conditions"] = json!(conditions);
                Ok(true)
            })
            .await?;
        tracing::info!(csr = name, user = %requested.common_name, "certificate request approved");
    }
    let signer = csr
        .lookup("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let server = match signer {
        KUBELET_SERVING => true,
        KUBELET_CLIENT | API_CLIENT => false,
        // Another signer's requests are for that signer to sign.
        _ => return Ok(()),
    };
    let certificate = api
        .pki
        .sign_request(&pem, server)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(certificate);
    api.registry
        .modify(&target, |obj| {
            let changed = obj["status"]["certificate"] != encoded.as_str();
            obj["status"]["certificate"] = json!(encoded);
            Ok(changed)
        })
        .await?;
    tracing::info!(csr = name, user = %requested.common_name, "certificate issued");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    fn csr(signer: &str, usages: &[&str], request: String, user: &str, groups: &[&str]) -> Value {
        json!({
            "metadata": {"name": "node-csr-1"},
            "spec": {"signerName": signer, "usages": usages, "request": request,
                     "username": user, "groups": groups},
        })
    }

    fn decision(c: &Value) -> Decision {
        let (_, r) = requested(c).unwrap();
        decide(c, &r)
    }

    #[test]
    fn requests_are_read_and_checked() {
        let c = csr(
            KUBELET_SERVING,
            &[],
            request("system:node:n1", &["system:nodes"], &["10.0.0.5", "n1"]),
            "",
            &[],
        );
        let (pem, r) = requested(&c).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(r.common_name, "system:node:n1");
        assert_eq!(r.organizations, ["system:nodes"]);
        assert_eq!(r.ip_addresses, ["10.0.0.5"]);
        assert_eq!(r.dns_names, ["n1"]);
        let bad = json!({"spec": {"request": "bm90IGEgcmVxdWVzdA=="}});
        assert_eq!(
            requested(&bad).unwrap_err(),
            "PEM block type must be CERTIFICATE REQUEST"
        );
        let mut obj = bad.clone();
        let err = admit(&mut obj, None).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.request"), "{}", err.message);
    }

    #[test]
    fn admission_stamps_the_requester_over_what_the_client_wrote() {
        let mut c = csr(
            KUBELET_CLIENT,
            &["client auth"],
            request("system:node:n1", &["system:nodes"], &[]),
            "system:admin",
            &["system:masters"],
        );
        c["status"] = json!({"certificate": "Zm9yZ2Vk"});
        let who = Identity {
            user: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into()],
        };
        admit(&mut c, Some(&who)).unwrap();
        assert_eq!(c["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(
            c["spec"]["groups"],
            json!(["system:bootstrappers", "system:authenticated"])
        );
        assert_eq!(c["status"], json!({}));
    }

    #[test]
    fn node_certificates_are_approved_and_nothing_else() {
        let client = request("system:node:n1", &["system:nodes"], &[]);
        let usages = ["digital signature", "client auth"];
        let boot = ["system:bootstrappers", "system:authenticated"];
        let by_token = csr(
            KUBELET_CLIENT,
            &usages,
            client.clone(),
            "system:bootstrap:x",
            &boot,
        );
        assert!(matches!(decision(&by_token), Decision::Approve(_)));
        let by_itself = csr(
            KUBELET_CLIENT,
            &usages,
            client.clone(),
            "system:node:n1",
            &[],
        );
        assert!(matches!(decision(&by_itself), Decision::Approve(_)));
        let by_other_node = csr(
            KUBELET_CLIENT,
            &usages,
            client.clone(),
            "system:node:n2",
            &[],
        );
        assert_eq!(decision(&by_other_node), Decision::Wait);
        let admin = request("admin", &["system:masters"], &[]);
        let escalation = csr(KUBELET_CLIENT, &usages, admin, "system:bootstrap:x", &boot);
        assert_eq!(decision(&escalation), Decision::Wait);
        let server_usage = csr(
            KUBELET_CLIENT,
            &["server auth"],
            client.clone(),
            "system:bootstrap:x",
            &boot,
        );
        assert_eq!(decision(&server_usage), Decision::Wait);
        let other_signer = csr(API_CLIENT, &usages, client, "system:bootstrap:x", &boot);
        assert_eq!(decision(&other_signer), Decision::Wait);

        let serving = request("system:node:n1", &["system:nodes"], &["10.0.0.5", "n1"]);
        let usages = ["digital signature", "server auth"];
        let own = csr(
            KUBELET_SERVING,
            &usages,
            serving.clone(),
            "system:node:n1",
            &[],
        );
        assert!(matches!(decision(&own), Decision::Approve(_)));
        let by_token = csr(
            KUBELET_SERVING,
            &usages,
            serving,
            "system:bootstrap:x",
            &boot,
        );
        assert_eq!(decision(&by_token), Decision::Wait);
        let nameless = request("system:node:n1", &["system:nodes"], &[]);
        let nameless = csr(KUBELET_SERVING, &usages, nameless, "system:node:n1", &[]);
        assert_eq!(decision(&nameless), Decision::Wait);
    }
}
