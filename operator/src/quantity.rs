//! Kubernetes quantities (`1Gi`, `500M`, `1.5Ti`, `2e9`) read as a number of bytes, for
//! `spec.persistence.size` and for the size of the claims a StatefulSet was made with. The
//! grammar is the API server's (`k8s.io/apimachinery/pkg/api/resource`), without a sign: a
//! number (`1`, `1.5`, `1.`, `.5`) and at most one suffix, binary (`Ki` .. `Ei`), decimal (`n`,
//! `u`, `m`, `k`, `M` .. `E`) or a decimal exponent (`e3`, `E-2`). The value is exact: `1Gi`,
//! `1024Mi` and `1073741824` are the same size, whatever form the API server writes back.

/// The largest quantity the API server holds as a whole number (an int64).
const MAX_BYTES: u128 = i64::MAX as u128;

/// Significant digits a size may have: a 64-bit byte count has at most 20, and with at most
/// 20 the arithmetic below cannot overflow before its checks.
const MAX_DIGITS: usize = 20;

/// Why a text is not a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "is not a quantity: write a number and at most one suffix, Ki, Mi, Gi, Ti, Pi or Ei \
         (powers of 1024), k, M, G, T, P or E (powers of 1000), such as 1Gi or 500M"
    )]
    Malformed,
    #[error("is zero")]
    Zero,
    #[error(
        "is not a whole number of bytes (m is milli, a thousandth: megabytes are M, \
         mebibytes Mi)"
    )]
    Fractional,
    #[error("is larger than Kubernetes can hold (2^63 - 1 bytes)")]
    TooLarge,
    #[error("has more than {MAX_DIGITS} significant digits")]
    TooManyDigits,
}

/// The exact value of `text`, as `significand * multiplier * 10^exponent`.
struct Parsed {
    significand: u128,
    multiplier: u128,
    exponent: i64,
}

fn parse(text: &str) -> Result<Parsed, QuantityError> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || (whole.is_empty() && fraction.is_empty()) {
        return Err(QuantityError::Malformed);
    }
    let (multiplier, mut exponent): (u128, i64) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        _ => (1, decimal_exponent(suffix)?),
    };
    // The digits without the point, leading and trailing zeros left out: the value is
    // significand * 10^(exponent - digits after the point).
    let digits = format!("{whole}{fraction}");
    let fraction_digits = i64::try_from(fraction.len()).map_err(|_| QuantityError::Malformed)?;
    exponent -= fraction_digits;
    let trimmed = digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    let trailing_zeros =
        i64::try_from(trimmed.len() - significant.len()).map_err(|_| QuantityError::Malformed)?;
    exponent += trailing_zeros;
    if significant.len() > MAX_DIGITS {
        return Err(QuantityError::TooManyDigits);
    }
    let significand = if significant.is_empty() {
        0
    } else {
        significant
            .parse::<u128>()
            .map_err(|_| QuantityError::Malformed)?
    };
    Ok(Parsed {
        significand,
        multiplier,
        exponent,
    })
}

/// The exponent of an `e<n>` or `E<n>` suffix: an integer with an optional sign.
fn decimal_exponent(suffix: &str) -> Result<i64, QuantityError> {
    let rest = suffix
        .strip_prefix(['e', 'E'])
        .ok_or(QuantityError::Malformed)?;
    let (negative, digits) = match rest.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, rest.strip_prefix('+').unwrap_or(rest)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Malformed);
    }
    // Beyond a few hundred every value is too large or not whole: saturate rather than fail.
    let significant = digits.trim_start_matches('0');
    let magnitude = if significant.is_empty() {
        0
    } else {
        significant
            .parse::<i64>()
            .unwrap_or(i64::MAX)
            .min(i64::from(u16::MAX))
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// Whether `text` is a Kubernetes quantity (any value, 0 and fractions included).
pub fn is_quantity(text: &str) -> bool {
    parse(text).is_ok()
}

/// `text` as a number of bytes: a quantity of at least one whole byte, at most 2^63 - 1.
pub fn bytes(text: &str) -> Result<u64, QuantityError> {
    let Parsed {
        significand,
        multiplier,
        exponent,
    } = parse(text)?;
    if significand == 0 {
        return Err(QuantityError::Zero);
    }
    // Below 10^20 * 2^60 < 2^127: no overflow.
    let value = significand * multiplier;
    let value = if exponent >= 0 {
        u32::try_from(exponent)
            .ok()
            .and_then(|exponent| 10u128.checked_pow(exponent))
            .and_then(|scale| value.checked_mul(scale))
            .ok_or(QuantityError::TooLarge)?
    } else {
        // A divisor beyond u128 is larger than the value, which then is not whole.
        let divisor = u32::try_from(exponent.unsigned_abs())
            .ok()
            .and_then(|exponent| 10u128.checked_pow(exponent))
            .ok_or(QuantityError::Fractional)?;
        if value % divisor != 0 {
            return Err(QuantityError::Fractional);
        }
        value / divisor
    };
    if value > MAX_BYTES {
        return Err(QuantityError::TooLarge);
    }
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_form_read_as_their_bytes() {
        for (text, expected) in [
            ("1", 1),
            ("1Gi", 1 << 30),
            ("1024Mi", 1 << 30),
            ("1073741824", 1 << 30),
            ("0.5Gi", 1 << 29),
            ("1.5Gi", 3 << 29),
            (".5Ki", 512),
            ("2.", 2),
            ("500M", 500_000_000),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1e3", 1000),
            ("1E3", 1000),
            ("2e+9", 2_000_000_000),
            ("1000e-3", 1),
            ("1e000", 1),
            ("1000m", 1),
            ("5000000000n", 5),
            ("1.000000000000000000000000000000G", 1_000_000_000),
            ("0001Ti", 1 << 40),
            ("7Ei", 7 << 60),
            ("9223372036854775807", i64::MAX as u64),
            ("8E", 8_000_000_000_000_000_000),
        ] {
            assert_eq!(bytes(text), Ok(expected), "{text}");
            assert!(is_quantity(text), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_size_says_why() {
        for text in [
            "", "Gi", ".", "1..5", "1.2.3", "-1Gi", "+1Gi", "1GB", "1gi", "1K", "1 Gi", " 1Gi",
            "1Gi ", "1e", "1e+", "1e1.5", "1Gie3", "0x10", "1,5Gi", "١Gi",
        ] {
            assert_eq!(bytes(text), Err(QuantityError::Malformed), "{text:?}");
            assert!(!is_quantity(text), "{text:?}");
        }
        for text in ["0", "0Gi", "0.0", ".0e9", "000"] {
            assert_eq!(bytes(text), Err(QuantityError::Zero), "{text}");
            assert!(is_quantity(text), "{text}");
        }
        for text in ["512m", "1.5", "1500e-3", "1.1Ki", "1n", "1e-3", "3e-400"] {
            assert_eq!(bytes(text), Err(QuantityError::Fractional), "{text}");
        }
        for text in [
            "9223372036854775808",
            "8Ei",
            "10E",
            "1e19",
            "1e99999999999999999999",
        ] {
            assert_eq!(bytes(text), Err(QuantityError::TooLarge), "{text}");
        }
        assert_eq!(
            bytes("1.00000000000000000001Gi"),
            Err(QuantityError::TooManyDigits)
        );
        assert!(QuantityError::Fractional
            .to_string()
            .contains("mebibytes Mi"));
    }
}
