//! The disko layout: the JSON of `disko.devices` (as `nix eval --json` exports it with the
//! `_`-prefixed attributes removed), or a hand-written minimal form in JSON or TOML with the
//! same field names where omitted fields get disko's defaults.
//!
//! Parsing walks a `serde_json::Value` by hand so that every error names its JSON path
//! (`disk.main.content.partitions.luks.content`) and what is wrong there.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::autosize::ImageSize;

/// A spec error: where and what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct SpecError {
    /// JSON path (`disk.main.content.partitions.ESP.size`); empty for the file as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError { path: path.to_string(), message: message.into() })
}

/// The whole layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Disks in attribute-name order.
    pub disks: Vec<Disk>,
    /// `nodev` mounts (tmpfs etc.): their content is dropped.
    pub nodev: Vec<Nodev>,
}

/// One disk (one output image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Attribute name.
    pub key: String,
    /// `name` (default: attribute name with `/` → `_`).
    pub name: String,
    /// Output file stem (`imageName`, default `name`).
    pub image_name: String,
    /// `imageSize` as written.
    pub image_size: String,
    /// Image size: bytes, or `"auto"` (the smallest that holds the content, see
    /// [`autosize`](crate::autosize)).
    pub size: ImageSize,
    /// Partitions in attribute-name order (placement sorts them).
    pub partitions: Vec<Partition>,
}

/// One GPT partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Attribute name.
    pub key: String,
    /// `name`.
    pub name: String,
    /// GPT partition name.
    pub label: String,
    /// `type` as written (`EF00`, a GUID).
    pub type_code: String,
    /// Resolved type GUID.
    pub type_guid: Uuid,
    /// `size`.
    pub size: String,
    /// `start`.
    pub start: String,
    /// `end`.
    pub end: String,
    /// `alignment` (0 = default).
    pub alignment: u64,
    /// `priority`.
    pub priority: i64,
    /// `uuid`.
    pub uuid: Option<Uuid>,
    /// `attributes`.
    pub attributes: Vec<u8>,
    /// What goes into it.
    pub content: Content,
}

/// A partition's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Nothing (e.g. the EF02 BIOS boot partition).
    None,
    /// `type = "filesystem"`.
    Filesystem(Filesystem),
    /// `type = "btrfs"` with subvolumes.
    Btrfs(Btrfs),
    /// `type = "swap"`.
    Swap(Swap),
}

/// A plain filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filesystem {
    /// `format` (vfat, ext4, btrfs, ...).
    pub format: FsFormat,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `extraArgs` for mkfs.
    pub extra_args: Vec<String>,
}

/// A filesystem's `format`: the ones mkdisk writes, or another name (refused when planned).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsFormat {
    /// FAT (`vfat`).
    Vfat,
    /// ext4.
    Ext4,
    /// btrfs (as a plain filesystem, without subvolumes).
    Btrfs,
    /// Any other format (xfs, f2fs, ...): not written yet.
    Other(String),
}

impl FsFormat {
    /// The format named `name` in the layout.
    #[must_use]
    pub fn from_name(name: &str) -> FsFormat {
        match name {
            "vfat" => FsFormat::Vfat,
            "ext4" => FsFormat::Ext4,
            "btrfs" => FsFormat::Btrfs,
            other => FsFormat::Other(other.to_string()),
        }
    }

    /// Its name in the layout.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            FsFormat::Vfat => "vfat",
            FsFormat::Ext4 => "ext4",
            FsFormat::Btrfs => "btrfs",
            FsFormat::Other(s) => s,
        }
    }
}

impl std::fmt::Display for FsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a mount point of the layout mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountTarget {
    /// A filesystem partition, or a btrfs top level: (disk index, partition index in the disk).
    Partition(usize, usize),
    /// A btrfs subvolume: (disk index, partition index, subvolume index).
    Subvolume(usize, usize, usize),
    /// A `nodev` mount (tmpfs, ...): its index in [`Spec::nodev`].
    Nodev(usize),
}

/// One mount point of the layout (see [`Spec::mounts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The JSON path of what mounts there (for messages).
    pub at: String,
    /// The mount point as written in the layout.
    pub mountpoint: &'a str,
    /// What mounts there.
    pub target: MountTarget,
}

/// A btrfs filesystem with subvolumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Btrfs {
    /// `mountpoint` of the top-level subvolume.
    pub mountpoint: Option<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `extraArgs` for mkfs.btrfs.
    pub extra_args: Vec<String>,
    /// Subvolumes in attribute-name order.
    pub subvolumes: Vec<Subvolume>,
}

/// A btrfs subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subvolume {
    /// Attribute name.
    pub key: String,
    /// `name`: path relative to the top level (`/root`, `@home`, `a/b`).
    pub name: String,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `extraArgs`.
    pub extra_args: Vec<String>,
}

/// A swap partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swap {
    /// `extraArgs` (for mkswap: `-L label`, `-U uuid` are honoured).
    pub extra_args: Vec<String>,
    /// `randomEncryption`: the partition is re-keyed at boot; we still write a signature.
    pub random_encryption: bool,
}

/// A `nodev` mount (tmpfs, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nodev {
    /// Attribute name.
    pub key: String,
    /// `fsType`.
    pub fs_type: String,
    /// `mountpoint`.
    pub mountpoint: String,
}

impl Spec {
    /// Parse a spec from JSON or TOML text (JSON if it starts with `{`, or is a JSON array,
    /// after an optional UTF-8 byte order mark and white space).
    ///
    /// # Errors
    /// An empty text, syntax errors, unsupported content, malformed fields; each names its
    /// path.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return err("", "the file is empty (expected the JSON of disko.devices, or a JSON or TOML layout)");
        }
        // `[` starts both a JSON array and a TOML table header (`[disk.main]`).
        let json = trimmed.starts_with('{')
            || trimmed.starts_with('[') && serde_json::from_str::<serde_json::Value>(text).is_ok();
        let v: Value = if json {
            serde_json::from_str(text).map_err(|e| SpecError { path: "(json)".into(), message: e.to_string() })?
        } else {
            toml::from_str(text).map_err(|e| SpecError { path: "(toml)".into(), message: e.to_string() })?
        };
        Spec::from_value(&v)
    }

    /// Parse from an already decoded value.
    ///
    /// # Errors
    /// As [`Spec::parse`].
    pub fn from_value(v: &Value) -> Result<Spec, SpecError> {
        let top = obj(v, "")?;
        // A bare `{ "disk": ... }` or the export wrapped in `disko.devices`.
        if let Some(inner) = top.get("disko").and_then(|d| d.get("devices")) {
            return Spec::from_value(inner);
        }
        for (key, what) in
            [("mdadm", "mdadm"), ("zpool", "zpool"), ("lvm_vg", "lvm_vg"), ("bcachefs_filesystems", "bcachefs")]
        {
            if let Some(m) = top.get(key) {
                let m = obj(m, key)?;
                if let Some(name) = m.keys().next() {
                    return err(
                        &format!("{key}.{name}"),
                        format!("unsupported type {what:?} (mkdisk writes GPT disks with vfat, ext4, btrfs and swap)"),
                    );
                }
            }
        }
        check_keys(top, "", TOP_KEYS, false)?;
        let mut disks = Vec::new();
        if let Some(d) = top.get("disk") {
            for (key, dv) in obj(d, "disk")? {
                disks.push(parse_disk(key, dv, &format!("disk.{key}"))?);
            }
        }
        if disks.is_empty() {
            return err("disk", "no disks in the layout");
        }
        check_disks_distinct(&disks)?;
        let mut nodev = Vec::new();
        if let Some(n) = top.get("nodev") {
            for (key, nv) in obj(n, "nodev")? {
                let path = format!("nodev.{key}");
                let o = obj(nv, &path)?;
                check_type(o, &path, "nodev", true)?;
                check_keys(o, &path, NODEV_KEYS, true)?;
                let fs_type = opt_str(o, &path, "fsType")?.unwrap_or_else(|| "tmpfs".into());
                let mountpoint = opt_str(o, &path, "mountpoint")?.unwrap_or_else(|| key.clone());
                nodev.push(Nodev { key: key.clone(), fs_type, mountpoint });
            }
        }
        let spec = Spec { disks, nodev };
        spec.check_mounts_distinct()?;
        Ok(spec)
    }

    /// Every mount point of the layout, in layout order: filesystems, btrfs top levels and
    /// subvolumes of each disk, then `nodev` mounts. The one enumeration of mounts: the source
    /// split, the NixOS content and the plan report all take it from here.
    #[must_use]
    pub fn mounts(&self) -> Vec<Mount<'_>> {
        let mut out = Vec::new();
        for (di, d) in self.disks.iter().enumerate() {
            for (pi, p) in d.partitions.iter().enumerate() {
                let at = format!("disk.{}.content.partitions.{}.content", d.key, p.key);
                let target = MountTarget::Partition(di, pi);
                match &p.content {
                    Content::Filesystem(fs) => {
                        out.extend(fs.mountpoint.as_deref().map(|mountpoint| Mount { at, mountpoint, target }));
                    }
                    Content::Btrfs(b) => {
                        let top =
                            b.mountpoint.as_deref().map(|mountpoint| Mount { at: at.clone(), mountpoint, target });
                        out.extend(top);
                        for (si, sv) in b.subvolumes.iter().enumerate() {
                            out.extend(sv.mountpoint.as_deref().map(|mountpoint| Mount {
                                at: format!("{at}.subvolumes.{}", sv.key),
                                mountpoint,
                                target: MountTarget::Subvolume(di, pi, si),
                            }));
                        }
                    }
                    Content::Swap(_) | Content::None => {}
                }
            }
        }
        out.extend(self.nodev.iter().enumerate().map(|(i, n)| Mount {
            at: format!("nodev.{}", n.key),
            mountpoint: n.mountpoint.as_str(),
            target: MountTarget::Nodev(i),
        }));
        out
    }

    /// The name of the btrfs subvolume a mount mounts, if it is one.
    #[must_use]
    pub fn subvolume_name(&self, t: MountTarget) -> Option<&str> {
        let MountTarget::Subvolume(d, p, s) = t else { return None };
        match &self.disks[d].partitions[p].content {
            Content::Btrfs(b) => Some(b.subvolumes[s].name.as_str()),
            _ => None,
        }
    }

    /// The filesystem format a mount reads (`tmpfs` and the like for `nodev` mounts).
    #[must_use]
    pub fn mount_format(&self, t: MountTarget) -> &str {
        match t {
            MountTarget::Partition(d, p) | MountTarget::Subvolume(d, p, _) => {
                match &self.disks[d].partitions[p].content {
                    Content::Filesystem(fs) => fs.format.name(),
                    Content::Btrfs(_) => "btrfs",
                    Content::Swap(_) | Content::None => "-",
                }
            }
            MountTarget::Nodev(i) => &self.nodev[i].fs_type,
        }
    }

    /// Two things mounted at one place would silently merge or drop content.
    fn check_mounts_distinct(&self) -> Result<(), SpecError> {
        let mounts = self.mounts();
        let norm = |m: &str| m.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/");
        for (i, m) in mounts.iter().enumerate() {
            if let Some(first) = mounts[..i].iter().find(|o| norm(o.mountpoint) == norm(m.mountpoint)) {
                return err(
                    &format!("{}.mountpoint", m.at),
                    format!("{:?} is also the mount point of {}", m.mountpoint, first.at),
                );
            }
        }
        Ok(())
    }
}

type Obj = serde_json::Map<String, Value>;

/// disko's hook options, which every device type but partitions and subvolumes has. mkdisk
/// runs no hooks; they are accepted and ignored.
const HOOKS: &[&str] =
    &["preCreateHook", "postCreateHook", "preMountHook", "postMountHook", "preUnmountHook", "postUnmountHook"];
const TOP_KEYS: &[&str] = &["disk", "nodev", "mdadm", "zpool", "lvm_vg", "bcachefs_filesystems"];
const DISK_KEYS: &[&str] = &["type", "name", "device", "imageName", "imageSize", "content", "destroy"];
const GPT_KEYS: &[&str] = &["type", "device", "partitions", "efiGptPartitionFirst"];
const PARTITION_KEYS: &[&str] = &[
    "type",
    "device",
    "priority",
    "name",
    "uuid",
    "label",
    "size",
    "alignment",
    "start",
    "end",
    "hybrid",
    "attributes",
    "content",
];
const FILESYSTEM_KEYS: &[&str] = &["type", "device", "extraArgs", "format", "mountOptions", "mountpoint"];
const BTRFS_KEYS: &[&str] = &["type", "device", "extraArgs", "mountOptions", "mountpoint", "subvolumes", "swap"];
const SUBVOL_KEYS: &[&str] = &["type", "name", "extraArgs", "mountOptions", "mountpoint", "swap"];
const SWAP_KEYS: &[&str] =
    &["type", "device", "discardPolicy", "extraArgs", "mountOptions", "priority", "randomEncryption", "resumeDevice"];
const NODEV_KEYS: &[&str] = &["type", "device", "fsType", "mountOptions", "mountpoint"];

/// Refuse attributes that disko does not define for this type (a misspelt `mountPoint`
/// would otherwise be ignored and change the image without a word), naming the closest
/// known one. `known` lists the type's own options; `with_hooks` adds disko's hooks.
fn check_keys(o: &Obj, path: &str, known: &[&str], with_hooks: bool) -> Result<(), SpecError> {
    let hooks = if with_hooks { HOOKS } else { &[] };
    for key in o.keys() {
        if known.contains(&key.as_str()) || hooks.contains(&key.as_str()) {
            continue;
        }
        let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        let best = known
            .iter()
            .chain(hooks)
            .map(|k| (strsim::jaro_winkler(&key.to_lowercase(), &k.to_lowercase()), *k))
            .filter(|(score, _)| *score >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let mut listed: Vec<&str> = known.to_vec();
        listed.sort_unstable();
        return match best {
            Some((_, k)) => err(&at, format!("unknown attribute (did you mean {k:?}?)")),
            None => err(&at, format!("unknown attribute (expected one of {})", listed.join(", "))),
        };
    }
    Ok(())
}

/// Two disks of one layout must not write the same image file, nor share a name.
fn check_disks_distinct(disks: &[Disk]) -> Result<(), SpecError> {
    for (i, a) in disks.iter().enumerate() {
        for b in &disks[..i] {
            if a.name == b.name {
                return err(
                    &format!("disk.{}.name", a.key),
                    format!("disks {:?} and {:?} are both named {:?}", b.key, a.key, a.name),
                );
            }
            if a.image_name == b.image_name {
                return err(
                    &format!("disk.{}.imageName", a.key),
                    format!("disks {:?} and {:?} would both write {}.raw", b.key, a.key, a.image_name),
                );
            }
        }
    }
    Ok(())
}

/// disko addresses partitions by label (`/dev/disk/by-partlabel/...`) and by name: both
/// must be unique within a disk.
fn check_partitions_distinct(parts: &[Partition], ppath: &str) -> Result<(), SpecError> {
    for (i, a) in parts.iter().enumerate() {
        for b in &parts[..i] {
            if a.label == b.label {
                return err(
                    &format!("{ppath}.{}.label", a.key),
                    format!("partitions {:?} and {:?} both have the label {:?}", b.key, a.key, a.label),
                );
            }
            if a.name == b.name {
                return err(
                    &format!("{ppath}.{}.name", a.key),
                    format!("partitions {:?} and {:?} are both named {:?}", b.key, a.key, a.name),
                );
            }
        }
    }
    Ok(())
}

fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, SpecError> {
    match v {
        Value::Object(o) => Ok(o),
        _ => err(
            if path.is_empty() { "(top level)" } else { path },
            format!("expected an attribute set, found {}", kind(v)),
        ),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}

fn opt_str(o: &Obj, path: &str, key: &str) -> Result<Option<String>, SpecError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Numbers are accepted where disko takes strings (`size = 1024` in TOML).
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(v) => err(&format!("{path}.{key}"), format!("expected a string, found {}", kind(v))),
    }
}

fn opt_int(o: &Obj, path: &str, key: &str) -> Result<Option<i64>, SpecError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => err(&format!("{path}.{key}"), format!("expected an integer, found {n}")),
        },
        Some(v) => err(&format!("{path}.{key}"), format!("expected an integer, found {}", kind(v))),
    }
}

fn opt_bool(o: &Obj, path: &str, key: &str) -> Result<Option<bool>, SpecError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => err(&format!("{path}.{key}"), format!("expected a boolean, found {}", kind(v))),
    }
}

fn str_list(o: &Obj, path: &str, key: &str) -> Result<Vec<String>, SpecError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => err(&format!("{path}.{key}[{i}]"), format!("expected a string, found {}", kind(v))),
            })
            .collect(),
        Some(v) => err(&format!("{path}.{key}"), format!("expected a list of strings, found {}", kind(v))),
    }
}

fn check_type(o: &Obj, path: &str, expected: &str, optional: bool) -> Result<(), SpecError> {
    match opt_str(o, path, "type")? {
        None if optional => Ok(()),
        None => err(&format!("{path}.type"), format!("missing (expected {expected:?})")),
        Some(t) if t == expected => Ok(()),
        Some(t) => err(&format!("{path}.type"), format!("expected {expected:?}, found {t:?}")),
    }
}

/// disko's `imageSize` syntax check: `[0-9]+[KMGTP]?`, or mkdisk's `auto`.
fn parse_image_size(s: &str, path: &str) -> Result<ImageSize, SpecError> {
    if s == "auto" {
        return Ok(ImageSize::Auto);
    }
    match mkdisk_gpt::parse_image_size(s) {
        Some(b) if b > 0 => Ok(ImageSize::Bytes(b)),
        Some(_) => err(path, format!("{s:?} is an empty image (the size must be greater than zero)")),
        None => err(
            path,
            format!("malformed size {s:?} (expected \"auto\" or [0-9]+[KMGTP]?, e.g. \"2G\"; a bare number is bytes)"),
        ),
    }
}

fn parse_disk(key: &str, v: &Value, path: &str) -> Result<Disk, SpecError> {
    let o = obj(v, path)?;
    check_type(o, path, "disk", true)?;
    check_keys(o, path, DISK_KEYS, true)?;
    let name = opt_str(o, path, "name")?.unwrap_or_else(|| key.replace('/', "_"));
    let image_name = opt_str(o, path, "imageName")?.unwrap_or_else(|| name.clone());
    if image_name.is_empty() || image_name.contains(['/', '\0']) || image_name.starts_with('.') {
        return err(&format!("{path}.imageName"), format!("{image_name:?} is not a usable file name"));
    }
    // `<imageName>.raw` (or a longer extension) must fit a file name's 255 bytes.
    if image_name.len() > 240 {
        return err(&format!("{path}.imageName"), format!("is {} bytes long (at most 240)", image_name.len()));
    }
    let image_size = opt_str(o, path, "imageSize")?.unwrap_or_else(|| "2G".into());
    let size = parse_image_size(&image_size, &format!("{path}.imageSize"))?;
    let cpath = format!("{path}.content");
    let content = match o.get("content") {
        None | Some(Value::Null) => return err(&cpath, "missing (expected a gpt partition table)"),
        Some(c) => obj(c, &cpath)?,
    };
    let ctype = opt_str(content, &cpath, "type")?.unwrap_or_default();
    match ctype.as_str() {
        "gpt" => {}
        "table" => return err(&cpath, "unsupported type \"table\" (the legacy parted table; use type = \"gpt\")"),
        other => return err(&cpath, format!("unsupported type {other:?} (a disk must hold a gpt partition table)")),
    }
    check_keys(content, &cpath, GPT_KEYS, true)?;
    let mut partitions = Vec::new();
    let ppath = format!("{cpath}.partitions");
    if let Some(p) = content.get("partitions") {
        for (pkey, pv) in obj(p, &ppath)? {
            partitions.push(parse_partition(&name, pkey, pv, &format!("{ppath}.{pkey}"))?);
        }
    }
    check_partitions_distinct(&partitions, &ppath)?;
    Ok(Disk { key: key.to_string(), name, image_name, image_size, size, partitions })
}

/// disko's default label: `disk-<disk>-<partition>`, or the first 36 hex characters of its
/// SHA-256 when longer than 36 characters.
#[must_use]
pub fn default_label(disk: &str, part: &str) -> String {
    let label = format!("disk-{disk}-{part}");
    if label.chars().count() > 36 {
        let digest = Sha256::digest(label.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex[..36].to_string()
    } else {
        label
    }
}

fn size_ok(s: &str) -> bool {
    s == "100%"
        || mkdisk_gpt::parse_sectors(s).is_some()
            && s.chars().last().is_some_and(|c| c.is_ascii_digit() || "KMGTP".contains(c))
}

fn parse_partition(disk: &str, key: &str, v: &Value, path: &str) -> Result<Partition, SpecError> {
    let o = obj(v, path)?;
    check_keys(o, path, PARTITION_KEYS, false)?;
    let name = opt_str(o, path, "name")?.unwrap_or_else(|| key.to_string());
    let cpath = format!("{path}.content");
    let content = match o.get("content") {
        None | Some(Value::Null) => Content::None,
        Some(c) => parse_content(c, &cpath)?,
    };
    let type_code = opt_str(o, path, "type")?.unwrap_or_else(|| {
        if matches!(content, Content::Swap(_)) {
            "8200".into()
        } else {
            "8300".into()
        }
    });
    let Some(type_guid) = mkdisk_gpt::types::type_guid(&type_code) else {
        return err(
            &format!("{path}.type"),
            format!("unknown partition type {type_code:?} (an sgdisk code like EF00 or a GUID)"),
        );
    };
    let size = opt_str(o, path, "size")?.unwrap_or_else(|| "0".into());
    if !size_ok(&size) {
        return err(&format!("{path}.size"), format!("malformed size {size:?} (expected \"100%\" or [0-9]+[KMGTP]?)"));
    }
    let start = opt_str(o, path, "start")?.unwrap_or_else(|| "0".into());
    let end = opt_str(o, path, "end")?.unwrap_or_else(|| if size == "100%" { "-0".into() } else { format!("+{size}") });
    for (field, val) in [("start", &start), ("end", &end)] {
        let body = val.trim_start_matches(['+', '-']);
        if mkdisk_gpt::parse_sectors(body).is_none() {
            return err(
                &format!("{path}.{field}"),
                format!("malformed position {val:?} (expected e.g. 0, 2048s, +512M, -0, 1G)"),
            );
        }
    }
    let alignment = match opt_int(o, path, "alignment")? {
        Some(a) => match u64::try_from(a) {
            Ok(a) => a,
            Err(_) => return err(&format!("{path}.alignment"), "must not be negative"),
        },
        None => u64::from(start.ends_with('s') || end.ends_with('s')),
    };
    let priority = match opt_int(o, path, "priority")? {
        Some(p) => p,
        None if size == "100%" => 9001,
        None if type_code == "EF02" => 100,
        None => 1000,
    };
    let label = opt_str(o, path, "label")?.unwrap_or_else(|| default_label(disk, &name));
    if label.encode_utf16().count() > 36 {
        return err(&format!("{path}.label"), format!("{label:?} is longer than the 36 UTF-16 units a GPT name holds"));
    }
    let uuid = match opt_str(o, path, "uuid")? {
        None => None,
        Some(u) => match Uuid::parse_str(&u) {
            Ok(u) => Some(u),
            Err(_) => return err(&format!("{path}.uuid"), format!("{u:?} is not a UUID")),
        },
    };
    let mut attributes = Vec::new();
    match o.get("attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, b) in a.iter().enumerate() {
                match b.as_u64().and_then(|b| u8::try_from(b).ok()).filter(|&b| b < 64) {
                    Some(b) => attributes.push(b),
                    None => return err(&format!("{path}.attributes[{i}]"), "expected a bit number 0..63"),
                }
            }
        }
        Some(v) => return err(&format!("{path}.attributes"), format!("expected a list, found {}", kind(v))),
    }
    if !matches!(o.get("hybrid"), None | Some(Value::Null)) {
        return err(&format!("{path}.hybrid"), "unsupported: hybrid MBR entries");
    }
    Ok(Partition {
        key: key.to_string(),
        name,
        label,
        type_code,
        type_guid,
        size,
        start,
        end,
        alignment,
        priority,
        uuid,
        attributes,
        content,
    })
}

fn parse_content(v: &Value, path: &str) -> Result<Content, SpecError> {
    let o = obj(v, path)?;
    let Some(t) = opt_str(o, path, "type")? else {
        return err(&format!("{path}.type"), "missing (expected filesystem, btrfs or swap)");
    };
    match t.as_str() {
        "filesystem" => {
            check_keys(o, path, FILESYSTEM_KEYS, true)?;
            let Some(format) = opt_str(o, path, "format")? else {
                return err(&format!("{path}.format"), "missing (vfat, ext4 or btrfs)");
            };
            Ok(Content::Filesystem(Filesystem {
                format: FsFormat::from_name(&format),
                mountpoint: mountpoint(o, path)?,
                mount_options: str_list(o, path, "mountOptions")?,
                extra_args: str_list(o, path, "extraArgs")?,
            }))
        }
        "btrfs" => {
            check_keys(o, path, BTRFS_KEYS, true)?;
            let mut subvolumes = Vec::new();
            let spath = format!("{path}.subvolumes");
            if let Some(s) = o.get("subvolumes") {
                let mut seen: BTreeMap<String, String> = BTreeMap::new();
                for (key, sv) in obj(s, &spath)? {
                    let sp = format!("{spath}.{key}");
                    let so = obj(sv, &sp)?;
                    check_type(so, &sp, "btrfs_subvol", true)?;
                    check_keys(so, &sp, SUBVOL_KEYS, false)?;
                    let name = opt_str(so, &sp, "name")?.unwrap_or_else(|| key.clone());
                    let norm: String = name.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>().join("/");
                    if norm.is_empty() || norm.split('/').any(|c| c == "." || c == "..") {
                        return err(&format!("{sp}.name"), format!("{name:?} is not a subvolume path"));
                    }
                    if let Some(other) = seen.insert(norm.clone(), key.clone()) {
                        return err(&sp, format!("subvolume path {norm:?} is also used by {other:?}"));
                    }
                    check_no_swap_files(so, &sp)?;
                    subvolumes.push(Subvolume {
                        key: key.clone(),
                        name,
                        mountpoint: mountpoint(so, &sp)?,
                        mount_options: str_list(so, &sp, "mountOptions")?,
                        extra_args: str_list(so, &sp, "extraArgs")?,
                    });
                }
            }
            check_no_swap_files(o, path)?;
            Ok(Content::Btrfs(Btrfs {
                mountpoint: mountpoint(o, path)?,
                mount_options: str_list(o, path, "mountOptions")?,
                extra_args: str_list(o, path, "extraArgs")?,
                subvolumes,
            }))
        }
        "swap" => {
            check_keys(o, path, SWAP_KEYS, true)?;
            Ok(Content::Swap(Swap {
                extra_args: str_list(o, path, "extraArgs")?,
                random_encryption: opt_bool(o, path, "randomEncryption")?.unwrap_or(false),
            }))
        }
        "luks" | "lvm_pv" | "mdraid" | "zfs" | "bcachefs" | "table" => {
            err(path, format!("unsupported type {t:?} (mkdisk writes vfat, ext4, btrfs and swap partitions)"))
        }
        other => err(path, format!("unknown content type {other:?} (expected filesystem, btrfs or swap)")),
    }
}

/// btrfs swap files are not written yet. disko exports `swap` as `{}` (older disko: an
/// attribute set of swap files) or `{ enable = false; files = [ ]; }` when there are none.
fn check_no_swap_files(o: &Obj, path: &str) -> Result<(), SpecError> {
    let spath = format!("{path}.swap");
    let swap = match o.get("swap") {
        None | Some(Value::Null) => return Ok(()),
        Some(v) => obj(v, &spath)?,
    };
    let none = if swap.contains_key("enable") || swap.contains_key("files") {
        opt_bool(swap, &spath, "enable")? != Some(true)
    } else {
        swap.is_empty()
    };
    if none {
        Ok(())
    } else {
        err(&spath, "unsupported: btrfs swap files")
    }
}

fn mountpoint(o: &Obj, path: &str) -> Result<Option<String>, SpecError> {
    match opt_str(o, path, "mountpoint")? {
        None => Ok(None),
        Some(m) if m.starts_with('/') && !m.split('/').any(|c| c == "..") => Ok(Some(m)),
        Some(m) => err(&format!("{path}.mountpoint"), format!("{m:?} is not an absolute path")),
    }
}
