//! Label selectors in Kubernetes' string syntax (`app=api,tier!=db,env in (prod,staging),!canary`):
//! parsing with errors that say where, matching, and the canonical form.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::names;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One condition on one label key. Values are sorted and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// Requirements that must all hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// Labels a selector can be matched against.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Requirement {
    /// Builds a requirement, checking the key, the values and their number for the operator.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        if let Some(err) = names::qualified_name(key).into_iter().next() {
            return Err(format!("key {key:?}: {err}"));
        }
        let count_ok = match operator {
            Operator::Equals | Operator::NotEquals | Operator::GreaterThan | Operator::LessThan => {
                values.len() == 1
            }
            Operator::In | Operator::NotIn => !values.is_empty(),
            Operator::Exists | Operator::DoesNotExist => values.is_empty(),
        };
        if !count_ok {
            return Err(match operator {
                Operator::In | Operator::NotIn => {
                    "for 'in', 'notin' operators, values set can't be empty".into()
                }
                Operator::Exists | Operator::DoesNotExist => {
                    "values set must be empty for exists and does not exist".into()
                }
                _ => "exact-match compatibility requires one single value".into(),
            });
        }
        for (i, value) in values.iter().enumerate() {
            if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
                if value.parse::<i64>().is_err() {
                    return Err(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer, not {value:?}"
                    ));
                }
            } else if let Some(err) = names::label_value(value).into_iter().next() {
                return Err(format!(
                    "values[{i}][{key}]: invalid value {value:?}: {err}"
                ));
            }
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn matches(&self, labels: &impl Labels) -> bool {
        let value = labels.label(&self.key);
        let has = |v: &str| self.values.binary_search_by(|x| x.as_str().cmp(v)).is_ok();
        let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(has),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(has),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                match (
                    number(value),
                    number(self.values.first().map(String::as_str)),
                ) {
                    (Some(have), Some(bound)) if self.operator == Operator::GreaterThan => {
                        have > bound
                    }
                    (Some(have), Some(bound)) => have < bound,
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let first = self.values.first().map_or("", String::as_str);
        match self.operator {
            Operator::Equals => write!(f, "{key}={first}"),
            Operator::NotEquals => write!(f, "{key}!={first}"),
            Operator::GreaterThan => write!(f, "{key}>{first}"),
            Operator::LessThan => write!(f, "{key}<{first}"),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
            Operator::In => write!(f, "{key} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{key} notin ({})", self.values.join(",")),
        }
    }
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector from requirements (sorted by key, as Kubernetes keeps them).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self { requirements }
    }

    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: input.to_string(),
            reason,
        };
        let tokens = lex(input);
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        if parser.peek().0 == Token::End {
            return Ok(Self::everything());
        }
        loop {
            requirements.push(parser.requirement().map_err(fail)?);
            match parser.next() {
                (Token::End, _) => break,
                (Token::Comma, _) => {}
                (token, at) => {
                    return Err(fail(format!(
                        "found {token}, expected ',' or the end, at position {at}"
                    )))
                }
            }
        }
        Ok(Self::from_requirements(requirements))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &impl Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Comma,
    Open,
    Close,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Greater,
    Less,
    In,
    NotIn,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Identifier(s) => write!(f, "{s:?}"),
            Token::Comma => f.write_str("','"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Equals => f.write_str("'='"),
            Token::DoubleEquals => f.write_str("'=='"),
            Token::NotEquals => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::Greater => f.write_str("'>'"),
            Token::Less => f.write_str("'<'"),
            Token::In => f.write_str("'in'"),
            Token::NotIn => f.write_str("'notin'"),
            Token::End => f.write_str("the end"),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Tokens with their character positions; the last is always `End`.
fn lex(input: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (token, width) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('=', Some('=')) => (Token::DoubleEquals, 2),
            ('!', Some('=')) => (Token::NotEquals, 2),
            ('=', _) => (Token::Equals, 1),
            ('!', _) => (Token::Bang, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            (',', _) => (Token::Comma, 1),
            ('>', _) => (Token::Greater, 1),
            ('<', _) => (Token::Less, 1),
            _ => {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| !c.is_whitespace() && !is_special(**c))
                    .collect();
                let width = word.chars().count();
                let token = match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Identifier(word),
                };
                (token, width)
            }
        };
        tokens.push((token, i));
        i += width;
    }
    tokens.push((Token::End, chars.len()));
    tokens
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &(Token, usize) {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> (Token, usize) {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = self.peek().0 == Token::Bang;
        if negated {
            self.next();
        }
        let key = match self.next() {
            (Token::Identifier(k), _) => k,
            (token, at) => {
                return Err(format!(
                    "found {token}, expected a label key, at position {at}"
                ))
            }
        };
        if negated {
            return Requirement::new(&key, Operator::DoesNotExist, Vec::new());
        }
        let (op_token, at) = self.peek().clone();
        let operator = match op_token {
            Token::Comma | Token::End => return Requirement::new(&key, Operator::Exists, Vec::new()),
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Greater => Operator::GreaterThan,
            Token::Less => Operator::LessThan,
            token => {
                return Err(format!(
                    "found {token}, expected one of '=', '==', '!=', 'in', 'notin', '>', '<', ',' after key {key:?}, at position {at}"
                ))
            }
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => vec![self.single_value()?],
        };
        Requirement::new(&key, operator, values)
    }

    /// One value; an absent one (`a=` followed by ',' or the end) is the empty string.
    fn single_value(&mut self) -> Result<String, String> {
        match self.peek().clone() {
            (Token::Identifier(v), _) => {
                self.next();
                Ok(v)
            }
            (Token::Comma | Token::End, _) => Ok(String::new()),
            (token, at) => Err(format!("found {token}, expected a value, at position {at}")),
        }
    }

    /// `( v1, v2, ... )`; an empty slot between commas is the empty string.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            (Token::Open, _) => {}
            (token, at) => return Err(format!("found {token}, expected '(', at position {at}")),
        }
        let mut values = Vec::new();
        if self.peek().0 == Token::Close {
            self.next();
            return Ok(values);
        }
        loop {
            let value = match self.peek().clone() {
                (Token::Identifier(v), _) => {
                    self.next();
                    v
                }
                (Token::Comma | Token::Close, _) => String::new(),
                (token, at) => {
                    return Err(format!("found {token}, expected a value, at position {at}"))
                }
            };
            values.push(value);
            match self.next() {
                (Token::Comma, _) => {}
                (Token::Close, _) => return Ok(values),
                (token, at) => {
                    return Err(format!(
                        "found {token}, expected ',' or ')', at position {at}"
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (selector, canonical form or the error fragment when it starts with "error: ")
    #[test]
    fn parses_to_canonical_form_or_says_why_not() {
        let cases = [
            ("", ""),
            ("  ", ""),
            ("app=api", "app=api"),
            ("app==api", "app=api"),
            ("tier != db", "tier!=db"),
            ("env in (prod, staging,prod)", "env in (prod,staging)"),
            ("env notin (dev)", "env notin (dev)"),
            ("canary", "canary"),
            ("!canary", "!canary"),
            ("replicas>2,replicas<10", "replicas>2,replicas<10"),
            ("zone=b,app=api", "app=api,zone=b"),
            ("app.kubernetes.io/name=api", "app.kubernetes.io/name=api"),
            ("a=", "a="),
            ("a in (x,)", "a in (,x)"),
            ("a in ()", "error: values set can't be empty"),
            ("a in (x", "error: expected ',' or ')', at position 7"),
            ("a in x", "error: expected '(', at position 5"),
            ("=a", "error: expected a label key, at position 0"),
            ("a b", "error: found \"b\", expected one of"),
            (
                "a=b c",
                "error: found \"c\", expected ',' or the end, at position 4",
            ),
            ("a=-x", "error: values[0][a]: invalid value \"-x\""),
            ("-a=x", "error: key \"-a\": name part must consist"),
            ("a>x", "error: must be an integer"),
            ("a,,b", "error: expected a label key, at position 2"),
            ("!a=b", "error: found '=', expected ',' or the end"),
        ];
        crate::testing::check_parse(&cases, LabelSelector::parse);
        assert!(LabelSelector::parse(" ").unwrap().is_everything());
        assert!(!LabelSelector::parse("a=b").unwrap().is_everything());
    }

    #[test]
    fn matches_as_kubernetes_does() {
        let pod = labels(&[("app", "api"), ("tier", "web"), ("replicas", "3")]);
        let cases = [
            ("", true),
            ("app=api", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
            ("app notin (api)", false),
            ("app in (db,api)", true),
            ("app in (db)", false),
            ("tier", true),
            ("missing", false),
            ("!missing", true),
            ("!tier", false),
            ("replicas>2", true),
            ("replicas>3", false),
            ("replicas<4", true),
            ("app>1", false),
            ("app=api,tier=web", true),
            ("app=api,tier=db", false),
        ];
        for (selector, want) in cases {
            let s = LabelSelector::parse(selector).unwrap();
            assert_eq!(s.matches(&pod), want, "{selector:?}");
        }
    }

    #[test]
    fn canonical_form_parses_back_to_the_same_selector() {
        for input in ["b in (y,x),a,!c,d!=e,f>3", "x=", "k in (,v)"] {
            let s = LabelSelector::parse(input).unwrap();
            assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s, "{input}");
        }
    }
}
