//! Nix fixtures for the tests: a scratch chroot store with a small real closure and a fake
//! NixOS toplevel, its closureInfo files, and a synthetic GRUB input directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::nix_command;

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

pub fn nix(store: &Path, args: &[&str]) -> Output {
    nix_command("nix-store").arg("--store").arg(store).args(args).output().unwrap()
}

pub fn nix_ok(store: &Path, args: &[&str]) -> String {
    let o = nix(store, args);
    assert_ok(&format!("nix-store {args:?}"), &o);
    String::from_utf8(o.stdout).unwrap()
}

/// A scratch store with a closure: a source directory (`nix-store --add`), a file output, a
/// fake kernel, initrd and systemd, and a toplevel with a self reference, a symlink into
/// another path and `boot.json`.
pub struct Scratch {
    pub store: PathBuf,
    pub toplevel: String,
    pub closure: PathBuf,
    pub store_paths: Vec<String>,
}

pub fn scratch_store(dir: &Path) -> Scratch {
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
        toplevel_nix(
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
pub fn toplevel_nix(name: &str, kernel: &str, initrd: &str, params: &str, label: &str, script: &str) -> String {
    format!(
        r#"  bootJson = builtins.toJSON {{
    "org.nixos.bootspec.v1" = {{
      init = "${{builtins.placeholder "out"}}/init";
      initrd = "{initrd}";
      kernel = "{kernel}";
      kernelParams = {params};
      label = "{label}";
      system = "x86_64-linux";
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

/// `nix-build` of the Nix expression `expr`, written to `dir/file`, in the chroot store `store`,
/// and closureInfo's files for what it built in `dir/closure`: (the output path, that
/// directory, the closure's store paths, sorted).
pub fn nix_build(dir: &Path, store: &Path, file: &str, expr: &str) -> (String, PathBuf, Vec<String>) {
    std::fs::write(dir.join(file), expr).unwrap();
    let o =
        nix_command("nix-build").arg("--store").arg(store).arg(dir.join(file)).arg("--no-out-link").output().unwrap();
    assert_ok("nix-build", &o);
    let toplevel = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let closure = dir.join("closure");
    let store_paths = make_closure_info(store, &toplevel, &closure);
    (toplevel, closure, store_paths)
}

/// closureInfo's files for `root`, as nixpkgs' closure-info.nix writes them.
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

/// A GRUB input directory with synthetic images shaped like GRUB's (a real core.img is only
/// needed to boot; the byte patching is what is checked here).
pub fn fake_grub_dir(dir: &Path) -> PathBuf {
    let g = dir.join("grub-inputs");
    std::fs::create_dir_all(g.join("i386-pc")).unwrap();
    let mut boot = vec![0xB0u8; 512];
    boot[0x1fe] = 0x55;
    boot[0x1ff] = 0xAA;
    std::fs::write(g.join("boot.img"), &boot).unwrap();
    let sectors = 53;
    let mut core = vec![0xC3u8; sectors * 512 - 100];
    core[0x1e8..0x1f4].fill(0);
    core[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&u16::try_from(sectors - 1).unwrap().to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    core[0x210..0x214].fill(0);
    core[0x214..0x216].copy_from_slice(&0x1234u16.to_le_bytes());
    std::fs::write(g.join("core.img"), &core).unwrap();
    std::fs::write(g.join("i386-pc/normal.mod"), "mod").unwrap();
    std::fs::write(g.join("i386-pc/moddep.lst"), "normal: \n").unwrap();
    g
}
