//! The architecture an image boots on, and what it decides: the EFI file names
//! (`BOOTX64.EFI`, `BOOTAA64.EFI`, `BOOTRISCV64.EFI`; UEFI 2.10 §3.5.1.1), the PE machine of
//! EFI binaries (PE format, "Machine Types"), GRUB's EFI platform directory, and whether there
//! is a BIOS at all. Nothing here depends on the host: an x86_64 machine writes an aarch64
//! image byte for byte as an aarch64 machine does.

use std::io::Read;
use std::path::Path;

use crate::NixError;

/// A target architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arch {
    /// x86_64 (amd64): UEFI `X64`, and a BIOS.
    X86_64,
    /// aarch64 (arm64): UEFI `AA64`.
    Aarch64,
    /// riscv64: UEFI `RISCV64`.
    Riscv64,
}

impl Arch {
    /// Every architecture, in the order `--help` lists them.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    /// The name (`x86_64`, `aarch64`, `riscv64`), as in a Nix system double.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// `x86_64`, `aarch64`, `riscv64` and the Debian names `amd64`, `arm64`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            "riscv64" => Some(Arch::Riscv64),
            _ => None,
        }
    }

    /// The architecture of a Nix system double (`aarch64-linux`), if it is one of these.
    #[must_use]
    pub fn from_nix_system(system: &str) -> Option<Arch> {
        Arch::parse(system.split_once('-').map_or(system, |(a, _)| a))
    }

    /// The architecture mkdisk was built for (the default target without a bootspec).
    #[must_use]
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else if cfg!(target_arch = "riscv64") {
            Arch::Riscv64
        } else {
            Arch::X86_64
        }
    }

    /// The UEFI file name suffix, lower case: `x64`, `aa64`, `riscv64`.
    #[must_use]
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "aa64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The removable-media boot path firmware looks for: `EFI/BOOT/BOOTX64.EFI`, ...
    #[must_use]
    pub fn removable_efi_path(self) -> String {
        format!("EFI/BOOT/BOOT{}.EFI", self.efi_suffix().to_ascii_uppercase())
    }

    /// The PE/COFF machine type of its EFI binaries.
    #[must_use]
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x8664,
            Arch::Aarch64 => 0xAA64,
            Arch::Riscv64 => 0x5064,
        }
    }

    /// The architecture of a PE machine type.
    #[must_use]
    pub fn from_pe_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.pe_machine() == machine)
    }

    /// GRUB's platform directory for EFI (`x86_64-efi`, `arm64-efi`, `riscv64-efi`).
    #[must_use]
    pub fn grub_efi_platform(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-efi",
            Arch::Aarch64 => "arm64-efi",
            Arch::Riscv64 => "riscv64-efi",
        }
    }

    /// Whether machines of this architecture boot from a BIOS (GRUB's `i386-pc`).
    #[must_use]
    pub fn has_bios(self) -> bool {
        self == Arch::X86_64
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The machine field of a PE image (`MZ`, `e_lfanew` at 0x3C, `PE\0\0`, then the machine), or
/// `None` where `head` (the file's first bytes) is not one.
#[must_use]
pub fn pe_machine(head: &[u8]) -> Option<u16> {
    if head.get(..2)? != b"MZ" {
        return None;
    }
    let lfanew = usize::try_from(u32::from_le_bytes(head.get(0x3C..0x40)?.try_into().ok()?)).ok()?;
    let sig = head.get(lfanew..lfanew.checked_add(6)?)?;
    (sig[..4] == *b"PE\0\0").then(|| u16::from_le_bytes([sig[4], sig[5]]))
}

/// Refuse an EFI binary `path` (`what`: "systemd-boot") built for another architecture than
/// `arch`. A file that is no PE image at all is let through (the firmware will say so; tests
/// use placeholder files).
///
/// # Errors
/// [`NixError::WrongArch`] for a PE image of another machine; [`NixError::MissingBootFile`]
/// when the file cannot be read.
pub fn check_efi_arch(what: &'static str, path: &Path, arch: Arch) -> Result<(), NixError> {
    let mut head = Vec::with_capacity(4096);
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    read.map_err(|e| NixError::MissingBootFile { what, path: path.display().to_string(), message: e.to_string() })?;
    match pe_machine(&head) {
        Some(m) if m != arch.pe_machine() => Err(NixError::WrongArch {
            what,
            path: path.to_path_buf(),
            found: Arch::from_pe_machine(m).map_or_else(|| format!("machine {m:#06x}"), |a| a.name().to_string()),
            arch,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE header for `machine`.
    pub(crate) fn pe(machine: u16) -> Vec<u8> {
        let mut v = vec![0u8; 0x100];
        v[..2].copy_from_slice(b"MZ");
        v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        v[0x80..0x84].copy_from_slice(b"PE\0\0");
        v[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
        v
    }

    #[test]
    fn names_and_machines() {
        assert_eq!(Arch::Aarch64.removable_efi_path(), "EFI/BOOT/BOOTAA64.EFI");
        assert_eq!(Arch::X86_64.removable_efi_path(), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(Arch::Riscv64.removable_efi_path(), "EFI/BOOT/BOOTRISCV64.EFI");
        assert_eq!(Arch::from_nix_system("aarch64-linux"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_nix_system("x86_64-linux"), Some(Arch::X86_64));
        assert_eq!(Arch::from_nix_system("i686-linux"), None);
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        for a in Arch::ALL {
            assert_eq!(pe_machine(&pe(a.pe_machine())), Some(a.pe_machine()));
            assert_eq!(Arch::from_pe_machine(a.pe_machine()), Some(a));
        }
        assert_eq!(pe_machine(b"fake-sd-boot\n"), None);
        assert_eq!(pe_machine(&pe(0x8664)[..0x84]), None, "truncated header");
    }

    #[test]
    fn a_mismatched_binary_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("systemd-bootx64.efi");
        std::fs::write(&p, pe(0x8664)).unwrap();
        check_efi_arch("systemd-boot", &p, Arch::X86_64).unwrap();
        let e = check_efi_arch("systemd-boot", &p, Arch::Aarch64).unwrap_err().to_string();
        assert!(e.contains("systemd-boot") && e.contains("x86_64") && e.contains("aarch64"), "{e}");
        std::fs::write(&p, b"placeholder").unwrap();
        check_efi_arch("systemd-boot", &p, Arch::Aarch64).unwrap();
    }
}
