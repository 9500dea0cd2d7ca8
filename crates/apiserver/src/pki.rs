//! The cluster's certificates: a CA made on first start, the API server's serving certificate and
//! the admin client certificate, kept as PEM files in `DATA_DIR/pki` and reused afterwards.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making certificate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// PEM text of everything the server and the admin kubeconfig need.
pub struct Pki {
    pub ca_cert: String,
    ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub admin_cert: String,
    pub admin_key: String,
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, PkiError> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(name, source)),
        }
    }

    /// Writes atomically (temporary file, then rename); keys are readable by the owner only.
    fn write(&self, name: &str, text: &str, private: bool) -> Result<(), PkiError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path(&format!(".{name}.tmp"));
        let mode = if private { 0o600 } else { 0o644 };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path(name))
        };
        write().map_err(|source| self.io(name, source))
    }

    fn io(&self, name: &str, source: std::io::Error) -> PkiError {
        PkiError::Io {
            path: self.path(name).display().to_string(),
            source,
        }
    }
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// Validity from a day ago for ten years (rcgen's default is a fixed 1975–4096 window).
fn validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

impl Pki {
    /// Loads the PKI from `data_dir/pki`, making what is missing. The serving certificate is made
    /// again when the wanted names (`sans`) change, signed by the same CA.
    pub fn load_or_create(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let files = Files {
            dir: data_dir.join("pki"),
        };
        std::fs::create_dir_all(&files.dir).map_err(|e| files.io("", e))?;

        let (ca_cert, ca_key) = match (files.read("ca.crt")?, files.read("ca.key")?) {
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                let key = KeyPair::generate().map_err(generate("CA key"))?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name("skiff-ca", None);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params);
                let cert = params.self_signed(&key).map_err(generate("CA"))?;
                files.write("ca.key", &key.serialize_pem(), true)?;
                files.write("ca.crt", &cert.pem(), false)?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let ca_key_pair = KeyPair::from_pem(&ca_key).map_err(generate("CA key from ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert, ca_key_pair).map_err(generate("CA from ca.crt"))?;

        let wanted_sans = sans.join("\n");
        let (server_cert, server_key) = match (
            files.read("server.crt")?,
            files.read("server.key")?,
            files.read("server.sans")?,
        ) {
            (Some(cert), Some(key), Some(had)) if had == wanted_sans => (cert, key),
            _ => {
                let key = KeyPair::generate().map_err(generate("serving key"))?;
                let mut params =
                    CertificateParams::new(sans.to_vec()).map_err(generate("serving"))?;
                params.distinguished_name = name("skiff-apiserver", None);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                validity(&mut params);
                let cert = params
                    .signed_by(&key, &issuer)
                    .map_err(generate("serving"))?;
                files.write("server.key", &key.serialize_pem(), true)?;
                files.write("server.crt", &cert.pem(), false)?;
                files.write("server.sans", &wanted_sans, false)?;
                (cert.pem(), key.serialize_pem())
            }
        };

        let (admin_cert, admin_key) = match (files.read("admin.crt")?, files.read("admin.key")?) {
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                let key = KeyPair::generate().map_err(generate("admin key"))?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name("admin", Some("system:masters"));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                validity(&mut params);
                let cert = params.signed_by(&key, &issuer).map_err(generate("admin"))?;
                files.write("admin.key", &key.serialize_pem(), true)?;
                files.write("admin.crt", &cert.pem(), false)?;
                (cert.pem(), key.serialize_pem())
            }
        };

        Ok(Pki {
            ca_cert,
            ca_key,
            server_cert,
            server_key,
            admin_cert,
            admin_key,
        })
    }

    /// A new certificate signed by the cluster CA, and its key (PEM): for a client (`sans`
    /// empty; CN the user, each O a group) or a server (`sans` its names and addresses).
    pub fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
    ) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(generate("CA key from ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert, ca_key).map_err(generate("CA from ca.crt"))?;
        let key = KeyPair::generate().map_err(generate("key"))?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(generate("certificate"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for org in orgs {
            dn.push(DnType::OrganizationName, *org);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = if sans.is_empty() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        validity(&mut params);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(generate("certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A certificate for a PKCS#10 request (PEM) whose signature was checked: its subject and
    /// names as requested, for a client or a server.
    pub fn sign_request(&self, request: &str, server: bool) -> Result<String, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(generate("CA key from ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert, ca_key).map_err(generate("CA from ca.crt"))?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(request)
            .map_err(generate("certificate from the request"))?;
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        validity(&mut csr.params);
        let cert = csr
            .signed_by(&issuer)
            .map_err(generate("certificate from the request"))?;
        Ok(cert.pem())
    }

    /// A kubeconfig for `user` with its client certificate against `server` (an `https://`
    /// URL).
    pub fn kubeconfig(&self, server: &str, user: &str, cert: &str, key: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    \
             client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: skiff\n  \
             context:\n    cluster: skiff\n    user: {user}\ncurrent-context: skiff\n",
            ca = b64(&self.ca_cert),
            cert = b64(cert),
            key = b64(key),
        )
    }

    /// A kubeconfig for the admin user against `server` (an `https://` URL).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        self.kubeconfig(server, "admin", &self.admin_cert, &self.admin_key)
    }

    /// Writes the admin kubeconfig (owner-only: it holds the admin key) and returns its path.
    pub fn write_admin_kubeconfig(
        &self,
        data_dir: &Path,
        server: &str,
    ) -> Result<PathBuf, PkiError> {
        let files = Files {
            dir: data_dir.to_path_buf(),
        };
        files.write("admin.kubeconfig", &self.admin_kubeconfig(server), true)?;
        Ok(files.path("admin.kubeconfig"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_and_serving_cert_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = Pki::load_or_create(dir.path(), &sans).unwrap();
        let again = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(first.ca_cert, again.ca_cert);
        assert_eq!(first.server_cert, again.server_cert);
        assert_eq!(first.admin_key, again.admin_key);

        let more = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "skiff.example".into(),
        ];
        let changed = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(changed.ca_cert, first.ca_cert, "the CA stays");
        assert_ne!(
            changed.server_cert, first.server_cert,
            "the serving cert is made anew"
        );

        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("pki/ca.key")), 0o600);

        use base64::Engine;
        let path = changed
            .write_admin_kubeconfig(dir.path(), "https://127.0.0.1:6443")
            .unwrap();
        assert_eq!(mode(&path), 0o600, "the kubeconfig holds the admin key");
        let text = std::fs::read_to_string(&path).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for want in [
            "server: https://127.0.0.1:6443".to_string(),
            format!("certificate-authority-data: {}", b64(&changed.ca_cert)),
            format!("client-certificate-data: {}", b64(&changed.admin_cert)),
            format!("client-key-data: {}", b64(&changed.admin_key)),
            "current-context: skiff".to_string(),
        ] {
            assert!(text.contains(&want), "kubeconfig lacks {want:?}:\n{text}");
        }
    }
}
