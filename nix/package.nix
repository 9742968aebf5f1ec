# The mkdisk command. The oracle tests need the checkers, QEMU and network-free Nix of
# tests/run.sh, which the sandbox does not have: the build runs the unit tests only.
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "mkdisk";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../Cargo.toml ../Cargo.lock ../clippy.toml ../crates ../benches ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "mkdisk" ];
  cargoTestFlags = [ "--workspace" "--lib" "--bins" ];
  meta = {
    description = "Bootable, reproducible disk images from a disko layout: no root, no VM";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "mkdisk";
    platforms = lib.platforms.linux;
  };
}
