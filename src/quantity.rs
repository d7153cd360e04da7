//! Kubernetes quantities (`500Mi`, `1.5G`, `2e9`, `100m`), parsed by the apiserver's grammar:
//! a decimal number, then a binary suffix (Ki..Ei), a decimal one (n, u, m, k, M..E) or an
//! exponent (`e3`). [`bytes`] and [`cpu`] are the two uses: a number of bytes (storage,
//! memory; whole bytes, so no milli, micro or nano) and CPU cores (at least 1m).

/// A Kubernetes quantity split into its number and its suffix, with its value in base units.
pub fn parse(s: &str) -> Option<(f64, &str)> {
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = (&s[..end], &s[end..]);
    let digits = number.strip_prefix('+').unwrap_or(number);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(frac) || (whole.is_empty() && frac.is_empty()) {
        return None;
    }
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let rest = exp.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || digits.len() > 2 || !all_digits(digits) {
                return None;
            }
            10f64.powi(rest.parse::<i32>().ok()?)
        }
    };
    let value: f64 = format!("{}.{}", if whole.is_empty() { "0" } else { whole }, frac)
        .trim_end_matches('.')
        .parse()
        .ok()?;
    Some((value * scale, suffix))
}

/// The largest quantity Kubernetes can hold (2^63 - 1 milli-units), in base units.
const MAX_QUANTITY: f64 = 9.2e15;

/// A quantity of bytes (`storage`, memory): a whole number of bytes at least 1, so no milli
/// (`100m` is a tenth of a byte), micro or nano suffix. Returns the bytes.
pub fn bytes(s: &str) -> Result<f64, String> {
    bytes_at_least(s, 1.0)
}

/// A quantity of bytes as [`bytes`], at least `min` (0 where "none" is a valid size).
pub fn bytes_at_least(s: &str, min: f64) -> Result<f64, String> {
    const WHY: &str = "must be a number of bytes such as 1Gi, 500Mi or 2G (no m, u or n suffix)";
    let (value, suffix) = parse(s).ok_or(WHY)?;
    if matches!(suffix, "m" | "u" | "n") || suffix.contains('-') || !(min..=MAX_QUANTITY).contains(&value) {
        return Err(WHY.into());
    }
    Ok(value)
}

/// A CPU quantity (`100m`, `0.5`, `2`), at least 1m. Returns the cores.
pub fn cpu(s: &str) -> Result<f64, String> {
    const WHY: &str = "must be a CPU quantity of at least 1m such as 100m, 0.5 or 2";
    let (value, _) = parse(s).ok_or(WHY)?;
    if !(0.001..=MAX_QUANTITY).contains(&value) {
        return Err(WHY.into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1Gi", "500Mi", "1.5G", "2e9", "100", "+1Ki", "0.5Gi", "1E3"] {
            assert!(bytes(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Gi", "1GB", "1 Gi", "1.2.3Gi", "0Gi", "0.0", "1e", "1e+", ".", "100m", "1u", "0.5", "1e-3", "99999Ei",
        ] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
        for ok in ["100m", "0.5", "2", "1m", "1500m"] {
            assert!(cpu(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "0.1m", "500u", "x", "1Z"] {
            assert!(cpu(bad).is_err(), "{bad}");
        }
        assert_eq!(bytes("1Ki"), Ok(1024.0));
    }

    #[test]
    fn fractions_of_a_binary_unit_are_whole_bytes() {
        assert_eq!(bytes("1.5Gi"), Ok(1610612736.0));
        assert_eq!(bytes_at_least("0Gi", 0.0), Ok(0.0));
        assert!(bytes("0Gi").is_err());
    }
}
