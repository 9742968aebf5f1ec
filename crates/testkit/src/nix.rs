//! Nix fixtures (real Nix, run through [`nix_command`]): `nix-store` and `nix-build` against a
//! scratch chroot store, a small real closure with a fake NixOS toplevel ([`scratch_store`]),
//! and closureInfo's files as nixpkgs writes them ([`make_closure_info`]). Callers check
//! [`crate::have_nix`] first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{assert_ok, nix_command};

/// `nix-store --store STORE ARGS` (stdin closed).
///
/// # Panics
/// Where `nix-store` cannot be started.
#[must_use]
pub fn nix(store: &Path, args: &[&str]) -> Output {
    nix_command("nix-store").arg("--store").arg(store).args(args).output().unwrap()
}

/// [`nix`] that must succeed: its stdout.
///
/// # Panics
/// Where `nix-store` fails (with its stderr and stdout) or prints something not UTF-8.
#[must_use]
pub fn nix_ok(store: &Path, args: &[&str]) -> String {
    let o = nix(store, args);
    assert_ok(&format!("nix-store {args:?}"), &o);
    String::from_utf8(o.stdout).unwrap()
}

/// [`nix_ok`] with `stdin` fed to `nix-store` (`--load-db`, `--import`).
///
/// # Panics
/// Where `nix-store` fails or prints something not UTF-8.
#[must_use]
pub fn nix_ok_stdin(store: &Path, args: &[&str], stdin: &[u8]) -> String {
    let mut c = nix_command("nix-store")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = c.wait_with_output().unwrap();
    assert_ok(&format!("nix-store {args:?}"), &o);
    String::from_utf8(o.stdout).unwrap()
}

/// What [`scratch_store`] made.
pub struct Scratch {
    /// The chroot store (`--store`): the store itself is `STORE/nix/store`.
    pub store: PathBuf,
    /// The toplevel's store path (`/nix/store/...-nixos-system-test-24.05`).
    pub toplevel: String,
    /// Its closureInfo directory ([`make_closure_info`]).
    pub closure: PathBuf,
    /// The closure's store paths, sorted.
    pub store_paths: Vec<String>,
}

/// A scratch chroot store `dir/store` with a closure: a source directory (`nix-store --add`),
/// a file output, a fake kernel, initrd and systemd, and a toplevel with a self reference, a
/// symlink into another path and `boot.json`; its closureInfo in `dir/closure`.
///
/// # Panics
/// Where Nix fails.
pub fn scratch_store(dir: &Path) -> Scratch {
    scratch_store_for(dir, "x86_64-linux")
}

/// [`scratch_store`] with a toplevel whose bootspec says `system` (`aarch64-linux`).
///
/// # Panics
/// Where Nix fails.
pub fn scratch_store_for(dir: &Path, system: &str) -> Scratch {
    let store = dir.join("store");
    let src = dir.join("src/a");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("f"), "hello\n").unwrap();
    std::fs::write(src.join("exe"), "#!/bin/sh\necho hi\n").unwrap();
    Command::new("chmod").args(["0755"]).arg(src.join("exe")).status().unwrap();
    std::os::unix::fs::symlink("f", src.join("link")).unwrap();
    std::fs::write(src.join("sub/empty"), "").unwrap();
    let a = nix_ok(&store, &["--add", src.to_str().unwrap()]).trim().to_string();
    let expr = format!(
        r#"
let
  a = builtins.storePath "{a}";
  sh = args: name: builtins.derivation {{
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + args) ];
  }};
  dep = sh "echo dep > $out" "dep";
  kernel = sh "mkdir $out; echo fake-kernel > $out/bzImage" "linux-6.1.0";
  initrd = sh "mkdir $out; echo fake-initrd > $out/initrd" "initrd-linux-6.1.0";
  systemd = sh "mkdir -p $out/lib/systemd/boot/efi; echo fake-sd-boot > $out/lib/systemd/boot/efi/systemd-bootx64.efi" "systemd-252";
{}"#,
        toplevel_nix_for(
            system,
            "nixos-system-test-24.05",
            "${kernel}/bzImage",
            "${initrd}/initrd",
            r#"[ "loglevel=4" "console=ttyS0" ]"#,
            "NixOS 24.05 (Linux 6.1.0)",
            r#"mkdir $out; echo ${dep} > $out/dep; echo ${a} > $out/a; printf '#!/bin/sh\n# %s\n' $out > $out/init; chmod +x $out/init; ln -s ${dep} $out/deplink; ln -s ${kernel}/bzImage $out/kernel; ln -s ${initrd}/initrd $out/initrd; ln -s ${systemd} $out/systemd; printf '%s' \"$bootJson\" > $out/boot.json"#,
        )
    );
    let (toplevel, closure, store_paths) = nix_build(dir, &store, "test.nix", &expr);
    Scratch { store, toplevel, closure, store_paths }
}

/// The end of a Nix expression (after `let` and the caller's bindings) for a fake NixOS toplevel
/// `name`: `/bin/sh` runs `script` with `$bootJson`, a boot.json (bootspec v1) naming the kernel
/// and initrd files `kernel` and `initrd` (Nix strings), `params` (a Nix list) and `label`.
#[must_use]
pub fn toplevel_nix(name: &str, kernel: &str, initrd: &str, params: &str, label: &str, script: &str) -> String {
    toplevel_nix_for("x86_64-linux", name, kernel, initrd, params, label, script)
}

/// [`toplevel_nix`] for a bootspec whose `system` is `system`.
#[must_use]
pub fn toplevel_nix_for(
    system: &str,
    name: &str,
    kernel: &str,
    initrd: &str,
    params: &str,
    label: &str,
    script: &str,
) -> String {
    format!(
        r#"  bootJson = builtins.toJSON {{
    "org.nixos.bootspec.v1" = {{
      init = "${{builtins.placeholder "out"}}/init";
      initrd = "{initrd}";
      kernel = "{kernel}";
      kernelParams = {params};
      label = "{label}";
      system = "{system}";
      toplevel = builtins.placeholder "out";
    }};
  }};
in builtins.derivation {{
  name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
  inherit bootJson;
  args = [ "-c" "export PATH=/bin:/usr/bin; {script}" ];
}}
"#
    )
}

/// `nix-build --no-out-link` of the Nix expression `expr`, written to `dir/file`, in the chroot
/// store `store`: the output path.
///
/// # Panics
/// Where the build fails.
#[must_use]
pub fn nix_build_out(dir: &Path, store: &Path, file: &str, expr: &str) -> String {
    std::fs::write(dir.join(file), expr).unwrap();
    let o =
        nix_command("nix-build").arg("--store").arg(store).arg(dir.join(file)).arg("--no-out-link").output().unwrap();
    assert_ok("nix-build", &o);
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// [`nix_build_out`], and closureInfo's files for what it built in `dir/closure`: (the output
/// path, that directory, the closure's store paths, sorted).
///
/// # Panics
/// Where Nix fails.
#[must_use]
pub fn nix_build(dir: &Path, store: &Path, file: &str, expr: &str) -> (String, PathBuf, Vec<String>) {
    let toplevel = nix_build_out(dir, store, file, expr);
    let closure = dir.join("closure");
    let store_paths = make_closure_info(store, &toplevel, &closure);
    (toplevel, closure, store_paths)
}

/// closureInfo's files (`store-paths`, `registration`, `total-nar-size`) for `root` in `out`,
/// as nixpkgs' closure-info.nix writes them, from what Nix says of the closure: its store
/// paths, sorted.
///
/// # Panics
/// Where Nix fails or a file cannot be written.
pub fn make_closure_info(store: &Path, root: &str, out: &Path) -> Vec<String> {
    std::fs::create_dir_all(out).unwrap();
    let mut paths: Vec<String> = nix_ok(store, &["-qR", root]).lines().map(str::to_string).collect();
    paths.sort();
    let mut reg = String::new();
    let mut total = 0u64;
    for p in &paths {
        let hash = nix_ok(store, &["-q", "--hash", p]).trim().to_string();
        let size = nix_ok(store, &["-q", "--size", p]).trim().to_string();
        total += size.parse::<u64>().unwrap();
        let refs: Vec<String> = nix_ok(store, &["-q", "--references", p]).lines().map(str::to_string).collect();
        reg.push_str(&format!("{p}\n{hash}\n{size}\n\n{}\n", refs.len()));
        for r in refs {
            reg.push_str(&r);
            reg.push('\n');
        }
    }
    std::fs::write(out.join("store-paths"), paths.iter().map(|p| format!("{p}\n")).collect::<String>()).unwrap();
    std::fs::write(out.join("registration"), reg).unwrap();
    std::fs::write(out.join("total-nar-size"), format!("{total}\n")).unwrap();
    paths
}
