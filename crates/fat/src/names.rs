//! Long names (validation, UTF-16) and deterministic 8.3 short names (`BASIS~N`).

use std::collections::{BTreeMap, BTreeSet};

/// An 11-byte short name: 8-byte base and 3-byte extension, space-padded, no dot.
pub(crate) type ShortName = [u8; 11];

/// Most UTF-16 code units in a long name.
pub(crate) const MAX_LONG_NAME_UNITS: usize = 255;

/// Check that `name` can be a FAT long name; return it as UTF-16.
pub(crate) fn long_name_units(name: &[u8]) -> Result<Vec<u16>, &'static str> {
    let s = std::str::from_utf8(name).map_err(|_| "not valid UTF-8")?;
    if s.is_empty() {
        return Err("empty name");
    }
    for c in s.chars() {
        if u32::from(c) < 0x20 {
            return Err("control character");
        }
        if matches!(c, '"' | '*' | '/' | ':' | '<' | '>' | '?' | '\\' | '|') {
            return Err("character forbidden on FAT (one of \" * / : < > ? \\ |)");
        }
    }
    if s.ends_with('.') || s.ends_with(' ') {
        return Err("ends with a dot or a space (FAT drivers strip them)");
    }
    let units: Vec<u16> = s.encode_utf16().collect();
    if units.len() > MAX_LONG_NAME_UNITS {
        return Err("longer than 255 UTF-16 code units");
    }
    Ok(units)
}

/// Characters allowed in a short name besides `A-Z` and `0-9` (ASCII only here).
fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"$%'-_@~`!(){}^#&".contains(&b)
}

fn pack(base: &[u8], ext: &[u8]) -> ShortName {
    let mut out = [b' '; 11];
    for (o, b) in out[..8].iter_mut().zip(base) {
        *o = *b;
    }
    for (o, b) in out[8..].iter_mut().zip(ext) {
        *o = *b;
    }
    out
}

/// The short name of `name` if it already is a valid upper-case 8.3 name (stored without
/// long-name entries).
pub(crate) fn exact_short_name(name: &[u8]) -> Option<ShortName> {
    let (base, ext) = match name.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let ext = &name[dot + 1..];
            if ext.is_empty() || ext.len() > 3 {
                return None;
            }
            (&name[..dot], ext)
        }
        None => (name, &[][..]),
    };
    if base.is_empty() || base.len() > 8 || !base.iter().chain(ext).all(|&b| is_short_char(b)) {
        return None;
    }
    Some(pack(base, ext))
}

/// fatgen103's basis name: (base, extension, lossy). Base and extension are not yet
/// truncated.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let mut lossy = false;
    // 1. Upper-case; anything that is not a short-name character becomes '_'.
    let mut chars: Vec<u8> = Vec::with_capacity(name.len());
    for c in name.chars() {
        let u = c.to_ascii_uppercase();
        match u8::try_from(u32::from(u)) {
            Ok(b) if is_short_char(b) || b == b' ' || b == b'.' => chars.push(b),
            _ => {
                chars.push(b'_');
                lossy = true;
            }
        }
    }
    // 2. Strip all spaces and leading periods.
    let before = chars.len();
    chars.retain(|&b| b != b' ');
    let lead = chars.iter().take_while(|&&b| b == b'.').count();
    chars.drain(..lead);
    if chars.len() != before {
        lossy = true;
    }
    // 3. Split at the last period; other periods in the base are removed.
    let (mut base, ext) = match chars.iter().rposition(|&b| b == b'.') {
        Some(dot) => (chars[..dot].to_vec(), chars[dot + 1..].to_vec()),
        None => (chars, Vec::new()),
    };
    let n = base.len();
    base.retain(|&b| b != b'.');
    if base.len() != n {
        lossy = true;
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

/// Short names for the names of one directory, in the order given (the directory's sorted
/// order): `(short name, needs long-name entries)`.
///
/// Names that are exact 8.3 names keep them (and are reserved first, so a generated name
/// never takes one); the others get their basis if it is lossless, fits and is free, else
/// the first free `BASIS~N`.
pub(crate) fn assign_short_names(names: &[&str]) -> Result<Vec<(ShortName, bool)>, &'static str> {
    let mut used: BTreeSet<ShortName> = BTreeSet::new();
    let mut out: Vec<Option<(ShortName, bool)>> = vec![None; names.len()];
    for (slot, name) in out.iter_mut().zip(names) {
        if let Some(s) = exact_short_name(name.as_bytes()) {
            if used.insert(s) {
                *slot = Some((s, false));
            }
        }
    }
    // Next tail number to try per (truncated base, extension).
    let mut next_tail: BTreeMap<ShortName, u32> = BTreeMap::new();
    for (slot, name) in out.iter_mut().zip(names) {
        if slot.is_some() {
            continue;
        }
        let (base, ext, lossy) = basis(name);
        let ext3 = &ext[..ext.len().min(3)];
        if !lossy && base.len() <= 8 && ext.len() <= 3 {
            let s = pack(&base, &ext);
            if used.insert(s) {
                *slot = Some((s, true));
                continue;
            }
        }
        let key = pack(&base[..base.len().min(8)], ext3);
        let mut n = next_tail.get(&key).copied().unwrap_or(1);
        loop {
            if n > 999_999 {
                return Err("no free short name");
            }
            let tail = format!("~{n}");
            let keep = base.len().min(8 - tail.len());
            let mut b = base[..keep].to_vec();
            b.extend_from_slice(tail.as_bytes());
            let s = pack(&b, ext3);
            n += 1;
            if used.insert(s) {
                *slot = Some((s, true));
                break;
            }
        }
        next_tail.insert(key, n);
    }
    Ok(out.into_iter().map(|s| s.unwrap_or(([b'_'; 11], true))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str) -> String {
        let v = assign_short_names(&[name]).unwrap();
        String::from_utf8(v[0].0.to_vec()).unwrap()
    }

    #[test]
    fn vectors() {
        assert_eq!(one("Foo"), "FOO        ");
        assert_eq!(one("Foo.baR"), "FOO     BAR");
        assert_eq!(one("Foo+1.baR"), "FOO_1~1 BAR");
        assert_eq!(one("ver +1.2.text"), "VER_12~1TEX");
        assert_eq!(one(".bashrc.swp"), "BASHRC~1SWP");
        assert_eq!(one(".foo"), "FOO~1      ");
        assert_eq!(one("thisisatest"), "THISIS~1   ");
        assert_eq!(one("loader.conf"), "LOADER~1CON");
        assert_eq!(one("Mixed.Conf"), "MIXED~1 CON");
        assert_eq!(one("EFI"), "EFI        ");
        assert!(!assign_short_names(&["BOOTX64.EFI"]).unwrap()[0].1);
        assert!(assign_short_names(&["bootx64.efi"]).unwrap()[0].1);
    }

    #[test]
    fn exact_names_are_reserved_first() {
        let v = assign_short_names(&["A+B", "A_B~1"]).unwrap();
        assert_eq!(&v[1].0, b"A_B~1      ");
        assert_eq!(&v[0].0, b"A_B~2      ");
    }

    #[test]
    fn many_collisions_are_unique() {
        let names: Vec<String> = (0..3000).map(|i| format!("a long file name {i:05}.text")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let v = assign_short_names(&refs).unwrap();
        let set: BTreeSet<_> = v.iter().map(|x| x.0).collect();
        assert_eq!(set.len(), names.len());
    }

    #[test]
    fn bad_long_names() {
        assert!(long_name_units(b"a:b").is_err());
        assert!(long_name_units(b"a\xffb").is_err());
        assert!(long_name_units(b"abc.").is_err());
        assert!(long_name_units(&[b'a'; 256]).is_err());
        assert_eq!(long_name_units(&[b'a'; 255]).unwrap().len(), 255);
    }
}
