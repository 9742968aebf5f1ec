//! The post-install layout of `nixos-install` (nix-store.md §6).

use mkdisk_tree::{FileData, Meta, Timestamp, Tree};

use crate::closure::store_basename;
use crate::NixError;

/// Add the system profile and the NixOS marker for `toplevel` (a store path):
///
/// ```text
/// /nix/var/nix/profiles/system          -> system-1-link
/// /nix/var/nix/profiles/system-1-link   -> <toplevel>
/// /nix/var/nix/profiles/per-user/root/  (0755)
/// /nix/var/nix/gcroots/                 (0755)
/// /etc/NIXOS                            (empty, 0644; only with `etc_nixos`, i.e. when `/`
///                                       is not a tmpfs)
/// ```
///
/// Every new inode gets `mtime` (GRUB menus and the systemd-boot entry date come from the
/// link's time).
///
/// # Errors
/// `toplevel` is not a store path, or a tree error (an entry exists already).
pub fn add_profiles(tree: &mut Tree, toplevel: &str, mtime: i64, etc_nixos: bool) -> Result<(), NixError> {
    store_basename(toplevel)?;
    let t = Timestamp::from_secs(mtime);
    let dm = Meta::new(0o755).with_mtime(t);
    let lm = Meta::new(0o777).with_mtime(t);
    let profiles = tree.mkdir_p(b"/nix/var/nix/profiles", &dm).map_err(NixError::tree("/nix/var/nix/profiles"))?;
    tree.add_symlink(profiles, b"system", b"system-1-link", lm.clone())
        .map_err(NixError::tree("/nix/var/nix/profiles/system"))?;
    tree.add_symlink(profiles, b"system-1-link", toplevel.as_bytes(), lm)
        .map_err(NixError::tree("/nix/var/nix/profiles/system-1-link"))?;
    tree.mkdir_p(b"/nix/var/nix/profiles/per-user/root", &dm)
        .map_err(NixError::tree("/nix/var/nix/profiles/per-user/root"))?;
    tree.mkdir_p(b"/nix/var/nix/gcroots", &dm).map_err(NixError::tree("/nix/var/nix/gcroots"))?;
    if !etc_nixos {
        return Ok(());
    }
    let etc = tree.mkdir_p(b"/etc", &dm).map_err(NixError::tree("/etc"))?;
    tree.add_file(etc, b"NIXOS", FileData::from_bytes(Vec::new()), Meta::new(0o644).with_mtime(t))
        .map_err(NixError::tree("/etc/NIXOS"))?;
    Ok(())
}
