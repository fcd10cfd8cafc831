//! Number text conversions that must agree with Python exactly: `repr(float)` formatting and
//! decimal <-> binary conversion of integers of any size (Python refuses `int(str)` / `str(int)`
//! past 4300 digits by default, so huge integers go through bytes instead).
use std::io::Write;

const CHUNK: u64 = 1_000_000_000;

/// Magnitude of a decimal digit string as little-endian bytes (no trailing zero bytes).
pub fn decimal_to_le_bytes(digits: &[u8]) -> Vec<u8> {
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let head = digits.len() % 9;
    let mut chunks: Vec<&[u8]> = Vec::with_capacity(digits.len() / 9 + 1);
    if head > 0 {
        chunks.push(&digits[..head]);
    }
    chunks.extend(digits[head..].chunks(9));
    for chunk in chunks {
        let mut value: u64 = 0;
        let mut scale: u64 = 1;
        for &d in chunk {
            value = value * 10 + (d - b'0') as u64;
            scale *= 10;
        }
        let mut carry = value;
        for limb in limbs.iter_mut() {
            let product = *limb as u64 * scale + carry;
            *limb = product as u32;
            carry = product >> 32;
        }
        while carry > 0 {
            limbs.push(carry as u32);
            carry >>= 32;
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Decimal digits of a magnitude given as little-endian bytes.
pub fn le_bytes_to_decimal(bytes: &[u8]) -> String {
    let mut limbs: Vec<u32> = bytes
        .chunks(4)
        .map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(word)
        })
        .collect();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    if limbs.is_empty() {
        return "0".to_string();
    }
    let mut groups: Vec<u32> = Vec::new();
    while !limbs.is_empty() {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut().rev() {
            let cur = (rem << 32) | *limb as u64;
            *limb = (cur / CHUNK) as u32;
            rem = cur % CHUNK;
        }
        groups.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut out = groups.last().unwrap().to_string();
    for g in groups.iter().rev().skip(1) {
        out.push_str(&format!("{g:09}"));
    }
    out
}

/// Appends `repr(value)` exactly as Python prints it, for a finite float.
///
/// Both use the shortest digit string that round-trips; Python then prints fixed notation when
/// the decimal point position is in (-4, 16] and exponent notation (at least two exponent
/// digits, explicit sign) otherwise.
pub fn write_float_repr(out: &mut Vec<u8>, value: f64) {
    let mut buf = [0u8; 40];
    let mut written = scientific(&mut buf, value, None);
    // `{:e}` gives the shortest round-trip digits ("-1.2345e-7"). When two digit strings of
    // that length both round-trip and the exact binary value lies halfway between them, Rust
    // rounds the tie up where Python picks the even digit. Only 16- and 17-digit strings can
    // tie (shorter decimal spacing is wider than a float's gap); for those, Rust's exact
    // formatting at the same length rounds half to even, and is used when it round-trips.
    let digits = buf[..written]
        .iter()
        .take_while(|&&b| b != b'e')
        .filter(|b| b.is_ascii_digit())
        .count();
    if digits >= 16 {
        let mut exact = [0u8; 40];
        let exact_len = scientific(&mut exact, value, Some(digits - 1));
        let round_trips = std::str::from_utf8(&exact[..exact_len])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            == Some(value);
        if round_trips {
            buf = exact;
            written = exact_len;
        }
    }
    let text = &buf[..written];
    let (negative, text) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let e_at = text.iter().position(|&b| b == b'e').unwrap_or(text.len());
    let mantissa = &text[..e_at];
    let exponent: i32 = std::str::from_utf8(&text[(e_at + 1).min(text.len())..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut n = 0;
    for &b in mantissa {
        if b != b'.' {
            digits[n] = b;
            n += 1;
        }
    }
    let digits = &digits[..n];
    let decpt = exponent + 1;
    if negative {
        out.push(b'-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-decpt) as usize));
            out.extend_from_slice(digits);
        } else if decpt as usize >= digits.len() {
            out.extend_from_slice(digits);
            out.extend(std::iter::repeat_n(b'0', decpt as usize - digits.len()));
            out.extend_from_slice(b".0");
        } else {
            out.extend_from_slice(&digits[..decpt as usize]);
            out.push(b'.');
            out.extend_from_slice(&digits[decpt as usize..]);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        let _ = write!(out, "{:02}", exponent.unsigned_abs());
    }
}

/// Writes `value` in Rust's `{:e}` notation (shortest, or with `precision` fraction digits)
/// into `buf`; returns the length written.
fn scientific(buf: &mut [u8; 40], value: f64, precision: Option<usize>) -> usize {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = match precision {
        None => write!(cursor, "{value:e}"),
        Some(p) => write!(cursor, "{value:.p$e}"),
    };
    cursor.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: f64) -> String {
        let mut out = Vec::new();
        write_float_repr(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn float_repr_matches_python() {
        let cases: [(f64, &str); 18] = [
            (562949953421312.0 + 0.25, "562949953421312.2"),
            (0.3, "0.3"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (1e22, "1e+22"),
            (12345.678, "12345.678"),
            (9007199254740993.0, "9007199254740992.0"),
        ];
        for (v, want) in cases {
            assert_eq!(repr(v), want, "repr of {v:e}");
        }
    }

    #[test]
    fn decimal_round_trips_through_bytes() {
        for digits in [
            "0",
            "1",
            "255",
            "256",
            "4294967296",
            "18446744073709551616",
            "123456789012345678901234567890123456789",
        ] {
            let bytes = decimal_to_le_bytes(digits.as_bytes());
            assert_eq!(le_bytes_to_decimal(&bytes), digits);
        }
        assert_eq!(decimal_to_le_bytes(b"256"), vec![0, 1]);
        assert_eq!(decimal_to_le_bytes(b"000"), Vec::<u8>::new());
        let big = "9".repeat(5000);
        assert_eq!(
            le_bytes_to_decimal(&decimal_to_le_bytes(big.as_bytes())),
            big
        );
    }
}
