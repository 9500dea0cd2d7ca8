//! Resource quantities (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) as exact integers of
//! thousandths, as Kubernetes' `resource.Quantity` reads them.

use std::fmt;

/// A quantity in thousandths of its unit: `100m` CPU is 100, `1Ki` of memory is 1_024_000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(pub i128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

impl Quantity {
    /// Whole units, rounded up (memory in bytes, pods, GPUs).
    pub fn units(self) -> i128 {
        (self.0 + 999).div_euclid(1000)
    }

    /// Thousandths (CPU in millicores).
    pub fn milli(self) -> i128 {
        self.0
    }

    pub fn from_units(units: i128) -> Quantity {
        Quantity(units * 1000)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Quantity, QuantityError> {
        parse(s)
    }
}

/// Parses a quantity. Fractions of a thousandth round up, as Kubernetes rounds CPU requests.
pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
    let s = s.trim();
    let number_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError);
    }
    // (base, exponent): the value is number * base^exponent.
    let (base, exponent): (i128, i32) = match suffix {
        "" => (10, 0),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        other => match other.strip_prefix(['e', 'E']) {
            Some(exp) => (10, exp.parse().map_err(|_| QuantityError)?),
            None => return Err(QuantityError),
        },
    };
    if fraction.len() > 30 || exponent.abs() > 40 {
        return Err(QuantityError);
    }
    let mantissa: i128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| QuantityError)?;
    // value * 1000 = mantissa * base^exponent * 1000 / 10^len(fraction)
    let mut numerator = mantissa.checked_mul(1000).ok_or(QuantityError)?;
    let mut denominator: i128 = 10i128.pow(fraction.len() as u32);
    let scale = base
        .checked_pow(exponent.unsigned_abs())
        .ok_or(QuantityError)?;
    if exponent >= 0 {
        numerator = numerator.checked_mul(scale).ok_or(QuantityError)?;
    } else {
        denominator = denominator.checked_mul(scale).ok_or(QuantityError)?;
    }
    let value = (numerator + denominator - 1) / denominator;
    Ok(Quantity(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_thousandths() {
        let cases: &[(&str, i128)] = &[
            ("1", 1000),
            ("100m", 100),
            ("0.5", 500),
            ("1.5", 1500),
            ("250m", 250),
            ("1Ki", 1_024_000),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("2G", 2_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("100n", 1),
            ("0", 0),
            ("-1", -1000),
            ("+2", 2000),
            (".5", 500),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(Quantity(*want)), "{input}");
        }
        for bad in ["", "m", "1.2.3", "12Q", "1Kii", "abc", "1 Gi"] {
            assert_eq!(parse(bad), Err(QuantityError), "{bad}");
        }
        assert_eq!(parse("128Mi").unwrap().units(), 134_217_728);
        assert_eq!(parse("100m").unwrap().to_string(), "100m");
        assert_eq!(parse("2").unwrap().to_string(), "2");
    }
}
