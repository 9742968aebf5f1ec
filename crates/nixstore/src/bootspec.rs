//! Bootspec v1 (`<toplevel>/boot.json`, boot.md §2) and resolving store paths on the host.

use std::path::{Path, PathBuf};

use crate::closure::store_basename;
use crate::{NixError, STORE_DIR};

/// The fields of `org.nixos.bootspec.v1` an installer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootspec {
    /// `init`: the stage-2 init, passed as `init=`.
    pub init: String,
    /// `kernel`: the kernel image (a store path or a file in one).
    pub kernel: String,
    /// `initrd`: the initial ramdisk, if any.
    pub initrd: Option<String>,
    /// `kernelParams`.
    pub kernel_params: Vec<String>,
    /// `label`: e.g. `NixOS 24.05 (Linux 6.1.192)`.
    pub label: String,
    /// `toplevel`: the system path.
    pub toplevel: String,
    /// `org.nixos.systemd-boot.sortKey` (default `nixos`).
    pub sort_key: String,
    /// Whether the `org.nixos.systemd-boot` extension is there (NixOS adds it when
    /// `boot.loader.systemd-boot.enable`).
    pub systemd_boot: bool,
    /// `system`, e.g. `x86_64-linux` (empty when absent).
    pub system: String,
}

impl Bootspec {
    /// Parse `boot.json` bytes; `path` is only used in errors.
    ///
    /// # Errors
    /// [`NixError::BadBootJson`]: not JSON, no `org.nixos.bootspec.v1`, a required field
    /// (`init`, `kernel`, `label`, `toplevel`) missing or of the wrong type.
    pub fn parse(json: &[u8], path: &Path) -> Result<Self, NixError> {
        let bad = |message: String| NixError::BadBootJson { path: path.to_path_buf(), message };
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let b = v.get("org.nixos.bootspec.v1").ok_or_else(|| bad("no \"org.nixos.bootspec.v1\" object".into()))?;
        let s = |k: &str| -> Result<String, NixError> {
            b.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| bad(format!("missing string {k:?}")))
        };
        let initrd = match b.get("initrd") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(x.as_str().ok_or_else(|| bad("\"initrd\" is not a string".into()))?.to_string()),
        };
        let kernel_params = match b.get("kernelParams") {
            None => Vec::new(),
            Some(x) => x
                .as_array()
                .ok_or_else(|| bad("\"kernelParams\" is not an array".into()))?
                .iter()
                .map(|p| p.as_str().map(str::to_string).ok_or_else(|| bad("a kernel parameter is not a string".into())))
                .collect::<Result<_, _>>()?,
        };
        let systemd_boot = v.get("org.nixos.systemd-boot").is_some();
        let system = b.get("system").and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let sort_key = v
            .get("org.nixos.systemd-boot")
            .and_then(|x| x.get("sortKey"))
            .and_then(|x| x.as_str())
            .unwrap_or("nixos")
            .to_string();
        Ok(Bootspec {
            init: s("init")?,
            kernel: s("kernel")?,
            initrd,
            kernel_params,
            label: s("label")?,
            toplevel: s("toplevel")?,
            sort_key,
            systemd_boot,
            system,
        })
    }

    /// Read `<toplevel>/boot.json` from the host store `store_dir`.
    ///
    /// # Errors
    /// [`NixError::NoBootJson`] when it does not exist, else as [`Bootspec::parse`].
    pub fn load(toplevel: &str, store_dir: &Path) -> Result<Self, NixError> {
        store_basename(toplevel)?;
        let json_path = format!("{toplevel}/boot.json");
        let host = match resolve_store_path(store_dir, &json_path) {
            Ok(p) => store_host_path(store_dir, &p)?,
            Err(_) => {
                return Err(NixError::NoBootJson {
                    toplevel: toplevel.to_string(),
                    host: store_host_path(store_dir, &json_path)?,
                })
            }
        };
        let bytes = match std::fs::read(&host) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NixError::NoBootJson { toplevel: toplevel.to_string(), host })
            }
            Err(e) => return Err(NixError::io(host, e)),
        };
        Self::parse(&bytes, &host)
    }

    /// The kernel command line: `init=<init>` then the kernel parameters.
    #[must_use]
    pub fn cmdline(&self) -> String {
        let mut s = format!("init={}", self.init);
        for p in &self.kernel_params {
            s.push(' ');
            s.push_str(p);
        }
        s
    }
}

/// The host path of `/nix/store/<rest>` in the host store directory `store_dir`.
///
/// # Errors
/// [`NixError::NotAStorePath`] for a path outside `/nix/store`.
pub fn store_host_path(store_dir: &Path, path: &str) -> Result<PathBuf, NixError> {
    let rest = path
        .strip_prefix(STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| NixError::NotAStorePath { path: path.to_string() })?;
    Ok(store_dir.join(rest))
}

/// Resolve symlinks in the store path `path` as the target system would see them (absolute
/// targets inside `/nix/store` are followed in `store_dir`), like `realpath`. Returns the
/// resolved `/nix/store/...` path; it exists on the host.
///
/// # Errors
/// [`NixError::NotAStorePath`] when the path or a link target leaves the store,
/// [`NixError::Io`] when a component does not exist, or after 40 links.
pub fn resolve_store_path(store_dir: &Path, path: &str) -> Result<String, NixError> {
    let mut comps: Vec<String> = split_store(path)?;
    let mut hops = 0u32;
    let mut i = 0usize;
    while i < comps.len() {
        let cur = format!("{STORE_DIR}/{}", comps[..=i].join("/"));
        let host = store_host_path(store_dir, &cur)?;
        let md = std::fs::symlink_metadata(&host).map_err(|e| NixError::io(&host, e))?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(NixError::io(host, std::io::Error::other("too many levels of symbolic links")));
            }
            let target = std::fs::read_link(&host).map_err(|e| NixError::io(&host, e))?;
            let target = target.to_string_lossy().into_owned();
            let rest: Vec<String> = comps[i + 1..].to_vec();
            let mut base: Vec<String> = if target.starts_with('/') {
                split_store(&target)?
            } else {
                let mut b = comps[..i].to_vec();
                for c in target.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => {
                            if b.pop().is_none() {
                                return Err(NixError::NotAStorePath { path: target.clone() });
                            }
                        }
                        c => b.push(c.to_string()),
                    }
                }
                if b.is_empty() {
                    return Err(NixError::NotAStorePath { path: target.clone() });
                }
                b
            };
            base.extend(rest);
            comps = base;
            i = 0;
            continue;
        }
        i += 1;
    }
    Ok(format!("{STORE_DIR}/{}", comps.join("/")))
}

fn split_store(path: &str) -> Result<Vec<String>, NixError> {
    let rest = path
        .strip_prefix(STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| NixError::NotAStorePath { path: path.to_string() })?;
    let mut out: Vec<String> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(NixError::NotAStorePath { path: path.to_string() });
                }
            }
            c => out.push(c.to_string()),
        }
    }
    if out.is_empty() {
        return Err(NixError::NotAStorePath { path: path.to_string() });
    }
    Ok(out)
}
