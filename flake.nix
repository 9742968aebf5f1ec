{
  description = "mkdisk: bootable, reproducible disk images from a disko layout, without root or a VM";

  # disko is the user's own input; mkdisk only reads the evaluated `disko.devices`.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      mkLib = pkgs: buildPkgs: import ./nix/lib.nix { inherit pkgs buildPkgs; };
    in
    {
      packages = forAll (system: rec {
        mkdisk = nixpkgs.legacyPackages.${system}.callPackage ./nix/package.nix { };
        default = mkdisk;
      });

      overlays.default = final: prev: { mkdisk = final.callPackage ./nix/package.nix { }; };

      apps = forAll (system: {
        default = { type = "app"; program = "${self.packages.${system}.mkdisk}/bin/mkdisk"; };
      });

      lib = {
        # `packages.x86_64-linux.image = mkdisk.lib.diskImages { nixosConfiguration = self.nixosConfigurations.HOST; };`
        # `buildPkgs` (default: the configuration's pkgs): the build machine's nixpkgs, e.g.
        # `nixpkgs.legacyPackages.x86_64-linux` for an aarch64 configuration built on x86_64.
        diskImages = args:
          let pkgs = args.nixosConfiguration.pkgs;
          in (mkLib pkgs (args.buildPkgs or pkgs)).diskImages (builtins.removeAttrs args [ "buildPkgs" ]);
        # disko.devices without its `_` attributes, as JSON text (what `mkdisk build` reads).
        layoutJSON = (mkLib { } { }).layoutJSON;
      };

      nixosModules.default = ./nix/module.nix;
    };
}
