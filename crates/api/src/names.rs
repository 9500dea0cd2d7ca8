//! Syntax of names in the Kubernetes API: DNS labels and subdomains, qualified names (label and
//! annotation keys), label values. Each check returns every problem found, in Kubernetes' words.

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Starts and ends with `edge`, and has only `edge` or `inner` characters.
fn shaped(s: &str, edge: fn(char) -> bool, inner: fn(char) -> bool) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    edge(first) && edge(last) && s.chars().all(|c| edge(c) || inner(c))
}

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// A DNS label (RFC 1123): namespace names, Service names, container names.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(too_long(DNS1123_LABEL_MAX));
    }
    if !shaped(s, is_lower_alnum, |c| c == '-') {
        errs.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
             regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    errs
}

/// A port's name (an IANA service name): container ports, probes' and Services' named targets.
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(too_long(15));
    }
    if !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// A DNS subdomain (RFC 1123): most object names, label key prefixes.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(too_long(DNS1123_SUBDOMAIN_MAX));
    }
    if !s
        .split('.')
        .all(|part| shaped(part, is_lower_alnum, |c| c == '-'))
    {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        );
    }
    errs
}

fn name_part_ok(s: &str) -> bool {
    shaped(s, is_alnum, |c| matches!(c, '-' | '_' | '.'))
}

/// A qualified name, `[prefix/]name`: label and annotation keys.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if name.contains('/') {
        errs.push(
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
             '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and \
             '/' (e.g. 'example.com/MyName')"
                .into(),
        );
        return errs;
    }
    match prefix {
        Some("") => errs.push("prefix part must be non-empty".into()),
        Some(p) => errs.extend(
            dns1123_subdomain(p)
                .into_iter()
                .map(|e| format!("prefix part {e}")),
        ),
        None => {}
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!("name part {}", too_long(QUALIFIED_NAME_MAX)));
        }
        if !name_part_ok(name) {
            errs.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
                 and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
                 '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                    .into(),
            );
        }
    }
    errs
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(too_long(LABEL_VALUE_MAX));
    }
    if !s.is_empty() && !name_part_ok(s) {
        errs.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or \
             'my_value',  or '12345', regex used for validation is \
             '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .into(),
        );
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, expected number of problems, a fragment the first problem contains)
    fn check(f: fn(&str) -> Vec<String>, cases: &[(&str, usize, &str)]) {
        for (input, count, fragment) in cases {
            let errs = f(input);
            assert_eq!(errs.len(), *count, "{input:?}: {errs:?}");
            if let Some(first) = errs.first() {
                assert!(first.contains(fragment), "{input:?}: {first}");
            }
        }
    }

    #[test]
    fn dns_labels() {
        let long = "a".repeat(64);
        check(
            dns1123_label,
            &[
                ("api-server", 0, ""),
                ("a", 0, ""),
                ("0abc", 0, ""),
                ("", 1, "RFC 1123 label"),
                ("Api", 1, "RFC 1123 label"),
                ("-a", 1, "RFC 1123 label"),
                ("a-", 1, "RFC 1123 label"),
                ("a.b", 1, "RFC 1123 label"),
                (&long, 1, "no more than 63"),
            ],
        );
    }

    #[test]
    fn dns_subdomains() {
        let long = format!("{}.com", "a".repeat(250));
        check(
            dns1123_subdomain,
            &[
                ("kube-root-ca.crt", 0, ""),
                ("example.com", 0, ""),
                ("a..b", 1, "RFC 1123 subdomain"),
                (".a", 1, "RFC 1123 subdomain"),
                ("A.com", 1, "RFC 1123 subdomain"),
                (&long, 1, "no more than 253"),
            ],
        );
    }

    #[test]
    fn qualified_names() {
        let long = "a".repeat(64);
        check(
            qualified_name,
            &[
                ("app", 0, ""),
                ("app.kubernetes.io/name", 0, ""),
                ("My_Key.1", 0, ""),
                ("", 1, "name part must be non-empty"),
                ("/app", 1, "prefix part must be non-empty"),
                ("example.com/", 1, "name part must be non-empty"),
                (
                    "Example.com/app",
                    1,
                    "prefix part a lowercase RFC 1123 subdomain",
                ),
                ("a/b/c", 1, "a qualified name must consist"),
                ("-app", 1, "name part must consist"),
                ("app key", 1, "name part must consist"),
                (&long, 1, "name part must be no more than 63"),
            ],
        );
    }

    #[test]
    fn label_values() {
        let long = "v".repeat(64);
        check(
            label_value,
            &[
                ("", 0, ""),
                ("v2.1", 0, ""),
                ("my_value", 0, ""),
                ("-x", 1, "a valid label must be"),
                ("a b", 1, "a valid label must be"),
                ("a/b", 1, "a valid label must be"),
                (&long, 1, "no more than 63"),
            ],
        );
    }
}
