# One test case of nix/lib.nix against the stub pkgs (crates/mkdisk/tests/nix_lib.rs builds
# `image` with nix-build, evaluates `layoutJSON`, compares `closureInfo` with Nix's own view of
# the closure, and `viaModule`/`viaFlake` with each other).
{ layout
, loader ? { }
, imageBuilder ? { }
, seed ? null
, grubRoot
, grubLibPath ? ""
, systemdBootEfi
, mkdiskBin
, kernel ? null
, initrd ? null
, params ? [ "console=ttyS0" ]
, systemdBootExt ? true
, noBootJson ? false
, extraArgs ? [ ]
  # A configuration for another platform (`aarch64-linux`), built here: its pkgs are a target
  # stub without builders, the build machine's are `buildPkgs` (the flake's `buildPkgs`).
, targetSystem ? null
}:
let
  pkgs = import ./stub-pkgs.nix { inherit grubRoot grubLibPath systemdBootEfi mkdiskBin; };
  mkdisk = pkgs.runCommand "mkdisk" { } ''
    mkdir -p $out/bin
    cp ${builtins.path { path = mkdiskBin; name = "mkdisk-bin"; }} $out/bin/mkdisk
  '';
  targetPkgs = if targetSystem == null then pkgs else import ./stub-pkgs.nix {
    inherit grubRoot grubLibPath mkdiskBin;
    hostPlatformSystem = targetSystem;
    builders = false;
  };
  lib = import ../../nix/lib.nix { pkgs = targetPkgs; buildPkgs = pkgs; inherit mkdisk; };
  toplevel = import ./system.nix {
    inherit pkgs kernel initrd params systemdBootExt noBootJson;
    system = targetPkgs.stdenv.hostPlatform.system;
    systemd = targetPkgs.systemd;
  };
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs.legacyPackages = { x86_64-linux = pkgs; aarch64-linux = pkgs; };
  };
  config = import ./config.nix { pkgs = targetPkgs; inherit layout loader toplevel imageBuilder; };
in
{
  image = lib.diskImages { inherit config seed extraArgs; };
  closureInfo = pkgs.closureInfo { rootPaths = [ toplevel ]; };
  # The same configuration through the NixOS module and the flake's lib (mkdisk from
  # package.nix, which the stub callPackage turns into the binary under test).
  viaModule = (import ../../nix/module.nix { inherit config pkgs; }).system.build.mkdiskImages;
  viaFlake = flake.lib.diskImages {
    nixosConfiguration = { inherit config; pkgs = targetPkgs; };
    buildPkgs = pkgs;
    inherit seed;
  };
  package = flake.packages.x86_64-linux.default;
  layoutJSON = lib.layoutJSON config.disko.devices;
  inherit config toplevel;
}
