# NixOS module: `system.build.mkdiskImages`, the images of this configuration's disko layout
# made by mkdisk (no VM). Needs disko's module for `disko.devices`.
{ config, pkgs, ... }:
{
  system.build.mkdiskImages = (import ./lib.nix { inherit pkgs; }).diskImages { inherit config; };
}
