//! Image references (`busybox`, `127.0.0.1:5000/team/app:1`, `app@sha256:...`) checked and
//! normalized by Docker's grammar, by hand: the usual regular expression compiles to 8 MiB
//! (its tag class is Unicode), which a node agent would carry for ever after its first pod.

use std::fmt;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed reference; a missing tag and digest read as tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &c[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Host labels (`[a-zA-Z0-9]`, inner `-`) joined by dots, with an optional `:port`.
fn domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

fn digest(d: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = d.split_once(':').ok_or("invalid checksum digest format")?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != length || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, &'static str> {
        if text.is_empty() {
            return Err("repository name must have at least one component");
        }
        let (rest, digest_part) = match text.split_once('@') {
            Some((rest, d)) => {
                digest(d)?;
                (rest, Some(d.to_string()))
            }
            None => (text, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag_part) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !tag(t) {
                    return Err("invalid tag format");
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !domain(first) {
                    return Err("invalid reference format");
                }
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("repository name must be lowercase");
        }
        if !repository.split('/').all(path_component) {
            return Err("invalid reference format");
        }
        if registry == LEGACY_DOMAIN {
            registry = DEFAULT_DOMAIN.to_string();
        }
        if registry == DEFAULT_DOMAIN && !repository.contains('/') {
            repository = format!("{OFFICIAL_PREFIX}/{repository}");
        }
        if repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err("repository name must not be more than 255 characters");
        }
        let tag = match (&tag_part, &digest_part) {
            (None, None) => Some("latest".to_string()),
            _ => tag_part,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest_part,
        })
    }

    /// The reference as the registry client takes it.
    pub fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.clone()),
            (t, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_docker_reads_them() {
        let sha = format!("sha256:{}", "a".repeat(64));
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("my-api:v2.1", "docker.io/library/my-api:v2.1".into()),
            ("team/app", "docker.io/team/app:latest".into()),
            (
                "index.docker.io/busybox:1",
                "docker.io/library/busybox:1".into(),
            ),
            ("localhost/app", "localhost/app:latest".into()),
            (
                "127.0.0.1:5000/team/app:1",
                "127.0.0.1:5000/team/app:1".into(),
            ),
            (
                "registry.example/a.b__c--d/e:V_1.0-x",
                "registry.example/a.b__c--d/e:V_1.0-x".into(),
            ),
            (
                &format!("app@{sha}"),
                format!("docker.io/library/app@{sha}"),
            ),
            (
                &format!("app:1@{sha}"),
                format!("docker.io/library/app:1@{sha}"),
            ),
        ] {
            assert_eq!(
                Reference::parse(given).unwrap().to_string(),
                want,
                "{given}"
            );
        }
        for (given, why) in [
            ("", "repository name must have at least one component"),
            ("Bad:Name:x", "repository name must be lowercase"),
            ("Busybox", "repository name must be lowercase"),
            ("app:", "invalid tag format"),
            ("app:-x", "invalid tag format"),
            ("a..b", "invalid reference format"),
            ("app_", "invalid reference format"),
            ("bad_host.example:port/app", "invalid reference format"),
            ("app@sha256:abc", "invalid checksum digest length"),
            ("app@md5:abc", "unsupported digest algorithm"),
        ] {
            assert_eq!(Reference::parse(given), Err(why), "{given}");
        }
    }

    #[test]
    fn the_registry_client_gets_the_same_reference() {
        let r = Reference::parse("127.0.0.1:5000/team/app:1").unwrap();
        let oci = r.to_oci();
        assert_eq!(oci.registry(), "127.0.0.1:5000");
        assert_eq!(oci.repository(), "team/app");
        assert_eq!(oci.tag(), Some("1"));
        assert_eq!(oci.whole(), r.to_string());
    }
}
