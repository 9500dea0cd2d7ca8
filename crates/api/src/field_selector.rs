//! Field selectors in Kubernetes' string syntax (`spec.nodeName=node-1,status.phase!=Running`):
//! parsing (with `\` escapes for `,`, `=` and `\` in values, as Kubernetes has them), matching,
//! canonical form.
//!
//! Which fields a kind can be selected by is the kinds table's business; this module only knows
//! the syntax and the comparison.

use std::fmt;

/// One `field=value` or `field!=value` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub equals: bool,
    pub value: String,
}

/// Terms that must all hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid field selector {selector:?}: {reason}")]
pub struct FieldSelectorError {
    pub selector: String,
    pub reason: String,
}

impl FieldSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn parse(input: &str) -> Result<Self, FieldSelectorError> {
        let fail = |reason: String| FieldSelectorError {
            selector: input.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            requirements.push(parse_term(&term).map_err(fail)?);
        }
        requirements.sort_by(|a, b| a.field.cmp(&b.field));
        Ok(Self { requirements })
    }

    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value `field` is required to equal, if a term says so (lets a list use an index).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equals && r.field == field)
            .map(|r| r.value.as_str())
    }

    /// Matches against an object's selectable fields; a field the object lacks counts as "".
    pub fn matches<'a>(&self, fields: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let have = fields(&r.field).unwrap_or("");
            (have == r.value) == r.equals
        })
    }
}

/// Splits at `sep` not preceded by a backslash, keeping escapes for the term parser.
fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("at least one part");
        match c {
            '\\' => {
                part.push(c);
                if let Some(next) = chars.next() {
                    part.push(next);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => part.push(c),
        }
    }
    parts
}

fn parse_term(term: &str) -> Result<FieldRequirement, String> {
    // The operator is the first unescaped "!=", "==" or "=".
    let chars: Vec<char> = term.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('\\', _) => i += 2,
            ('!', Some('=')) => return finish(term, &chars, i, 2, false),
            ('=', Some('=')) => return finish(term, &chars, i, 2, true),
            ('=', _) => return finish(term, &chars, i, 1, true),
            _ => i += 1,
        }
    }
    Err(format!(
        "{term:?} is not of the form field=value or field!=value"
    ))
}

fn finish(
    term: &str,
    chars: &[char],
    at: usize,
    width: usize,
    equals: bool,
) -> Result<FieldRequirement, String> {
    let field: String = chars[..at].iter().collect::<String>().trim().to_string();
    let raw: String = chars[at + width..].iter().collect();
    if field.is_empty() {
        return Err(format!("{term:?} names no field"));
    }
    Ok(FieldRequirement {
        field,
        equals,
        value: unescape(raw.trim())?,
    })
}

fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence \\{e} in {raw:?}")),
                None => return Err(format!("{raw:?} ends with an unfinished escape")),
            },
            '=' | ',' => return Err(format!("unescaped {c:?} in value {raw:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if r.equals { "=" } else { "!=" };
            write!(f, "{}{op}{}", r.field, escape(&r.value))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_to_canonical_form_or_says_why_not() {
        let cases = [
            ("", ""),
            ("metadata.name=api", "metadata.name=api"),
            ("metadata.name==api", "metadata.name=api"),
            (
                "status.phase!=Running,spec.nodeName=node-1",
                "spec.nodeName=node-1,status.phase!=Running",
            ),
            ("spec.nodeName=", "spec.nodeName="),
            (" a = b ", "a=b"),
            (r"a=x\,y", r"a=x\,y"),
            (r"a=x\=y\\z", r"a=x\=y\\z"),
            ("a", "error: is not of the form field=value"),
            ("=x", "error: names no field"),
            ("a=b=c", "error: unescaped '='"),
            (r"a=b\q", r"error: invalid escape sequence \q"),
            (r"a=b\!", r"error: invalid escape sequence \!"),
            ("a=wow!", "a=wow!"),
            (r"a=b\", "error: unfinished escape"),
        ];
        crate::testing::check_parse(&cases, FieldSelector::parse);
        assert!(FieldSelector::parse(" ").unwrap().is_everything());
        assert!(!FieldSelector::parse("a=b").unwrap().is_everything());
    }

    #[test]
    fn matches_fields_with_missing_ones_as_empty() {
        let fields = |f: &str| match f {
            "metadata.name" => Some("api-1"),
            "spec.nodeName" => Some("node-1"),
            "weird" => Some("a,b"),
            _ => None,
        };
        let cases = [
            ("", true),
            ("metadata.name=api-1", true),
            ("metadata.name=api-2", false),
            ("spec.nodeName!=node-2", true),
            ("spec.nodeName!=node-1", false),
            ("status.phase=", true),
            ("status.phase!=", false),
            (r"weird=a\,b", true),
            ("metadata.name=api-1,spec.nodeName=node-2", false),
        ];
        for (selector, want) in cases {
            let s = FieldSelector::parse(selector).unwrap();
            assert_eq!(s.matches(fields), want, "{selector:?}");
        }
        let s = FieldSelector::parse("spec.nodeName=node-1,status.phase!=Failed").unwrap();
        assert_eq!(s.required_value("spec.nodeName"), Some("node-1"));
        assert_eq!(s.required_value("status.phase"), None);
    }
}
