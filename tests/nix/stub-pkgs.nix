# A stand-in for nixpkgs in the offline tests (crates/mkdisk/tests/nix_lib.rs): exactly the
# attributes nix/lib.nix may use (runCommand, writeText, closureInfo, callPackage, grub2,
# grub2_efi, systemd, zstd, stdenv.hostPlatform.system) and nothing else, so that lib.nix
# touching any other attribute fails the tests. Every derivation is a `builtins.derivation`
# run by the host's /bin/sh with PATH=/usr/bin:/bin (Nix's sandbox-paths bring /bin, /lib,
# /lib64 and /usr in), so no nixpkgs and no network are needed.
#
# Host inputs (host paths, as paths or strings, copied into the store; all optional):
{
  # The mkdisk binary under test (callPackage ../../nix/package.nix gives it, too).
  mkdiskBin ? null
  # GRUB's library directory (`/usr/lib/grub`: i386-pc/ for grub2, x86_64-efi/ for grub2_efi).
, grubLib ? (if grubRoot == null then null else "${toString grubRoot}/usr/lib/grub")
  # grub-mkimage, for grub2_efi's bin/ (mkdisk runs it for GRUB's EFI image) ...
, grubMkimage ? (if grubRoot == null then null else "${toString grubRoot}/usr/bin/grub-mkimage")
  # ... and its LD_LIBRARY_PATH (colon-separated host directories; missing ones are skipped).
, grubLdLibraryPath ? grubLibPath
  # systemd-bootx64.efi; without it a small fake file ("fake-sd-boot\n").
, systemdBoot ? systemdBootEfi
  # The same, as case.nix names them: a root holding usr/lib/grub/{i386-pc,x86_64-efi} and
  # usr/bin/grub-mkimage, grub-mkimage's library path, systemd-bootx64.efi.
, grubRoot ? null
, grubLibPath ? ""
, systemdBootEfi ? null
  # The platform the packages are for (`stdenv.hostPlatform.system`, systemd-boot's name). A
  # target stub (`builders = false`) has no runCommand, writeText, closureInfo, callPackage or
  # zstd: lib.nix must take those from `buildPkgs` (its derivations still build here).
, hostPlatformSystem ? "x86_64-linux"
, builders ? true
}:
let
  system = "x86_64-linux";
  efiArch = { "x86_64-linux" = "x64"; "aarch64-linux" = "aa64"; "riscv64-linux" = "riscv64"; }.${hostPlatformSystem};
  sdName = "systemd-boot${efiArch}.efi";
  noBuilder = what: throw "stub pkgs for ${hostPlatformSystem}: ${what} belongs to buildPkgs";
  hostPath = name: p: builtins.path { path = /. + toString p; inherit name; };

  # nixpkgs' runCommand: NAME, environment ENV, a shell script. /bin/sh here (nixpkgs: bash with
  # set -eu -o pipefail), so lib.nix's scripts must be POSIX sh.
  runCommand = name: env: buildCommand:
    builtins.derivation (env // {
      inherit name system buildCommand;
      builder = "/bin/sh";
      args = [ "-c" "set -eu; export PATH=/usr/bin:/bin; eval \"$buildCommand\"" ];
    });

  writeText = name: text: runCommand name { inherit text; } "printf '%s' \"$text\" > \"$out\"";

  # nixpkgs' pkgs/build-support/closure-info.nix: structured attrs and exportReferencesGraph
  # (Nix 2.8 writes $NIX_BUILD_TOP/.attrs.json), its jq programs done by closure-info.py with
  # the host's python3 (tests/run.sh installs python3, not jq), so store-paths, registration and
  # total-nar-size are byte for byte nixpkgs' (sha256:<nix32> hashes, empty deriver lines).
  closureInfo = { rootPaths }:
    builtins.derivation {
      name = "closure-info";
      inherit system;
      builder = "/usr/bin/python3";
      __structuredAttrs = true;
      exportReferencesGraph.closure = rootPaths;
      args = [ ./closure-info.py ];
    };

  # What package.nix gets besides the allowed attributes: a `lib` and a `rustPlatform` whose
  # buildRustPackage gives the binary under test (its arguments kept in `rustAttrs` for the
  # flake test).
  mkdiskUnderTest = runCommand "mkdisk-under-test" { } ''
    mkdir -p $out/bin
    ln -s ${hostPath "mkdisk" mkdiskBin} $out/bin/mkdisk
  '';
  lib = {
    fileset = { toSource = { root, fileset }: fileset; unions = l: l; };
    licenses = { mit = "MIT"; asl20 = "Apache-2.0"; };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  rustPlatform.buildRustPackage = attrs: mkdiskUnderTest // { rustAttrs = attrs; };

  # A minimal callPackage: the function's named arguments from pkgs (and lib, rustPlatform).
  callPackage = fn: args:
    let f = if builtins.isFunction fn then fn else import fn;
    in f (builtins.intersectAttrs (builtins.functionArgs f) (pkgs // { inherit lib rustPlatform; }) // args);

  copyGrub = name: platform: extra: runCommand name { } (''
    mkdir -p $out/lib/grub
    cp -r ${hostPath platform "${grubLib}/${platform}"} $out/lib/grub/${platform}
    chmod -R u+w $out/lib/grub
  '' + extra);

  ldDirs = builtins.filter (d: builtins.isString d && d != "" && builtins.pathExists d)
    (builtins.split ":" grubLdLibraryPath);
  ldPath = builtins.concatStringsSep ":" (map (d: "${hostPath "grub-libs" d}") ldDirs);

  pkgs = (if builders then { inherit runCommand writeText closureInfo callPackage; } else {
    runCommand = noBuilder "runCommand";
    writeText = noBuilder "writeText";
    closureInfo = noBuilder "closureInfo";
    callPackage = noBuilder "callPackage";
  }) // {
    stdenv.hostPlatform.system = hostPlatformSystem;

    grub2 = copyGrub "grub-2-stub" "i386-pc" "";
    grub2_efi = copyGrub "grub-efi-2-stub" "x86_64-efi" (if grubMkimage == null then "" else ''
      mkdir -p $out/bin
      cp ${hostPath "grub-mkimage" grubMkimage} $out/bin/.grub-mkimage-wrapped
      printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s "$@"\n' '${ldPath}' "$out/bin/.grub-mkimage-wrapped" > $out/bin/grub-mkimage
      chmod +x $out/bin/grub-mkimage
    '');

    systemd = runCommand "systemd-stub" { } (''
      mkdir -p $out/lib/systemd/boot/efi
    '' + (if systemdBoot == null
      then "echo fake-sd-boot > $out/lib/systemd/boot/efi/${sdName}"
      else "cp ${hostPath sdName systemdBoot} $out/lib/systemd/boot/efi/${sdName}"));
  } // (if builders then {
    zstd = runCommand "zstd-stub" { } ''
      mkdir -p $out/bin
      ln -s /usr/bin/zstd $out/bin/zstd
    '';
  } else { zstd = noBuilder "zstd"; });
in
pkgs
