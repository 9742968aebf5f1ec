//! Hash renderings (nix-store.md §4.2, §4.3): nix32, base16, SRI base64.

const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Nix base32 ("nix32") of `bytes`: `ceil(8n/5)` characters, most significant digit first.
#[must_use]
pub fn nix32_encode(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = u32::from(bytes[i]) >> j;
        let hi = if i + 1 < bytes.len() { u32::from(bytes[i + 1]) << (8 - j) } else { 0 };
        out.push(char::from(NIX32[((lo | hi) & 31) as usize]));
    }
    out
}

/// Decode nix32 text into `size` bytes; `None` on a bad character, length or overflow.
#[must_use]
pub fn nix32_decode(s: &str, size: usize) -> Option<Vec<u8>> {
    if s.len() != (size * 8).div_ceil(5) {
        return None;
    }
    let mut out = vec![0u8; size];
    for (pos, c) in s.bytes().enumerate() {
        let digit = u16::try_from(NIX32.iter().position(|&a| a == c)?).ok()?;
        let n = s.len() - 1 - pos;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let v = digit << j;
        out[i] |= (v & 0xff) as u8;
        let carry = (v >> 8) as u8;
        if i + 1 < size {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = u32::try_from(A.iter().position(|&a| a == c)?).ok()?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Parse a SHA-256 NAR hash as the registration format allows it: `sha256:<64 hex>`,
/// `sha256:<52 nix32>`, SRI `sha256-<base64>`, or a bare hex/nix32/base64 digest.
#[must_use]
pub fn parse_nar_hash(s: &str) -> Option<[u8; 32]> {
    let bytes = if let Some(b64) = s.strip_prefix("sha256-") {
        base64_decode(b64)?
    } else {
        let rest = s.strip_prefix("sha256:").unwrap_or(s);
        match rest.len() {
            64 => hex_decode(rest)?,
            52 => nix32_decode(rest, 32)?,
            44 => base64_decode(rest)?,
            _ => return None,
        }
    };
    bytes.try_into().ok()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        let h = hex_decode("f899307446b4812a812701bd5a1c829965acd935c9ea0c6feec87828779966ab").unwrap();
        assert_eq!(nix32_encode(&h), "1av6k5vjhy68xrphrsn96pcsqrcrh8f5mg814y0jm0dl8rs316gq");
        assert_eq!(nix32_decode("1av6k5vjhy68xrphrsn96pcsqrcrh8f5mg814y0jm0dl8rs316gq", 32).unwrap(), h);
        let h2 = hex_decode("f8907d7814b90f7bcb34a3b7466e556c6f681281456126362d6c1d4fd1d01a19").unwrap();
        assert_eq!(nix32_encode(&h2), "068ss38ly7bc5lv2cqa5h496hvvcamp4ddx36k5pn3xr2iw7v47q");
        let sri = parse_nar_hash("sha256-+JkwdEa0gSqBJwG9WhyCmWWs2TXJ6gxv7sh4KHeZZqs=").unwrap();
        assert_eq!(sri.to_vec(), h);
        assert_eq!(parse_nar_hash("sha256:1av6k5vjhy68xrphrsn96pcsqrcrh8f5mg814y0jm0dl8rs316gq").unwrap().to_vec(), h);
        assert_eq!(
            parse_nar_hash("f899307446b4812a812701bd5a1c829965acd935c9ea0c6feec87828779966ab").unwrap().to_vec(),
            h
        );
        assert!(parse_nar_hash("sha256:xyz").is_none());
        assert!(parse_nar_hash("sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee").is_none());
        // A 52-digit string whose top bits overflow 256 bits.
        assert!(nix32_decode(&"z".repeat(52), 32).is_none());
    }
}
