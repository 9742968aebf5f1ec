# A stub of an evaluated NixOS configuration holding just what nix/lib.nix reads: disko.devices
# from a shared export with `_` attributes added back at every level (as disko's evaluated
# options carry them), disko.imageBuilder, boot.loader, system.build.toplevel, systemd.package.
{ pkgs, layout, loader, toplevel, imageBuilder ? { } }:
let
  underscored = v:
    if builtins.isAttrs v then
      builtins.mapAttrs (n: underscored) v // {
        _meta = { deviceDependencies = { }; };
        _create = "echo create";
        _pkgs = pkgs: [ "parted" ];
        _config = [ { _parent = "a function below"; f = x: x; } ];
        _type = "option";
      }
    else if builtins.isList v then map underscored v
    else v;
in
{
  disko.devices = underscored (builtins.fromJSON (builtins.readFile layout));
  disko.imageBuilder = {
    name = "mkdisk-test-images";
    imageFormat = "raw";
    copyNixStore = true;
    extraPostVM = "";
  } // imageBuilder;
  boot.loader = loader;
  system.build.toplevel = toplevel;
  systemd.package = pkgs.systemd;
}
