//! Partition type GUIDs from sgdisk short codes (gdisk 1.0.9 `parttypes.cc`, the subset NixOS
//! and disko layouts use) or full GUID strings, and named constants for the types mkdisk
//! gives a meaning to ([`ESP`], [`BIOS_BOOT`], [`LINUX_FILESYSTEM`], [`LINUX_SWAP`], …), so
//! callers compare against these instead of spelling GUIDs out again.

use uuid::Uuid;

/// (sgdisk code, type GUID, description)
pub const CODES: &[(&str, &str, &str)] = &[
    ("EF02", "21686148-6449-6E6F-744E-656564454649", "BIOS boot partition"),
    ("EF00", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI system partition"),
    ("EF01", "024DEE41-33E7-11D3-9D69-0008C781F39F", "MBR partition scheme"),
    ("8300", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("8200", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("8301", "8DA63339-0007-60C0-C436-083AC8230908", "Linux reserved"),
    ("8302", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux /home"),
    ("8303", "44479540-F297-41B2-9AF7-D131D5F0458A", "Linux x86 root (/)"),
    ("8304", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux x86-64 root (/)"),
    ("8305", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux ARM64 root (/)"),
    ("8306", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux /srv"),
    ("8307", "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux ARM32 root (/)"),
    ("8309", "CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("8310", "4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux /var"),
    ("8311", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux /var/tmp"),
    ("8314", "8484680C-9521-48C6-9C11-B0720656F69E", "Linux /usr (x86-64)"),
    ("8E00", "E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("FD00", "A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("EA00", "BC13C2FF-59E6-4262-A352-B275FD6F7172", "XBOOTLDR partition"),
    ("0700", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
    ("0C01", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    ("BF00", "6A82CB45-1DD2-11B2-99A6-080020736631", "Solaris boot"),
    ("BF01", "6A898CC3-1DD2-11B2-99A6-080020736631", "Solaris /usr & Mac ZFS"),
    ("A504", "516E7CB6-6ECF-11D6-8FF8-00022D09712B", "FreeBSD ZFS"),
];

/// Resolve a disko `type`: a 4-hex sgdisk code (case-insensitive) or a GUID string.
#[must_use]
pub fn type_guid(code: &str) -> Option<Uuid> {
    let up = code.to_ascii_uppercase();
    if let Some((_, g, _)) = CODES.iter().find(|(c, _, _)| *c == up) {
        return Uuid::parse_str(g).ok();
    }
    if code.len() == 36 {
        return Uuid::parse_str(code).ok();
    }
    None
}

/// The sgdisk code of a type GUID, if it has one.
#[must_use]
pub fn type_code(guid: &Uuid) -> Option<&'static str> {
    CODES.iter().find(|(_, g, _)| Uuid::parse_str(g).ok().as_ref() == Some(guid)).map(|(c, _, _)| *c)
}

/// `EF00`: EFI system partition (the ESP; mkdisk installs systemd-boot here).
pub const ESP: Uuid = Uuid::from_u128(0xC12A_7328_F81F_11D2_BA4B_00A0_C93E_C93B);
/// `EF02`: BIOS boot partition (GRUB's `core.img` on a BIOS/GPT disk).
pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x2168_6148_6449_6E6F_744E_6565_6445_4649);
/// `8300`: Linux filesystem data (the default type of a disko partition).
pub const LINUX_FILESYSTEM: Uuid = Uuid::from_u128(0x0FC6_3DAF_8483_4772_8E79_3D69_D847_7DE4);
/// `8200`: Linux swap.
pub const LINUX_SWAP: Uuid = Uuid::from_u128(0x0657_FD6D_A4AB_43C4_84E5_0933_C84B_4F4F);
/// `8309`: Linux LUKS.
pub const LINUX_LUKS: Uuid = Uuid::from_u128(0xCA7D_7CCB_63ED_4C53_861C_1742_5360_59CC);
/// `8E00`: Linux LVM.
pub const LINUX_LVM: Uuid = Uuid::from_u128(0xE6D6_D379_F507_44C2_A23C_238F_2A3D_F928);
/// `EA00`: XBOOTLDR (the Boot Loader Specification's extended boot partition).
pub const XBOOTLDR: Uuid = Uuid::from_u128(0xBC13_C2FF_59E6_4262_A352_B275_FD6F_7172);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_constants_match_the_code_table() {
        for (code, guid) in [
            ("EF00", ESP),
            ("EF02", BIOS_BOOT),
            ("8300", LINUX_FILESYSTEM),
            ("8200", LINUX_SWAP),
            ("8309", LINUX_LUKS),
            ("8E00", LINUX_LVM),
            ("EA00", XBOOTLDR),
        ] {
            assert_eq!(type_guid(code), Some(guid), "{code}");
            assert_eq!(type_guid(&code.to_ascii_lowercase()), Some(guid), "{code}");
            assert_eq!(type_code(&guid), Some(code));
        }
        assert_eq!(ESP.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(BIOS_BOOT.to_string(), "21686148-6449-6e6f-744e-656564454649");
    }

    #[test]
    fn every_code_parses() {
        for (code, guid, _) in CODES {
            assert_eq!(type_guid(code).map(|g| g.to_string().to_ascii_uppercase()).as_deref(), Some(*guid));
        }
        assert_eq!(type_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"), Some(ESP));
        assert_eq!(type_guid("zz00"), None);
    }
}
