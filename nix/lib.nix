# mkdisk's Nix library: `diskImages` (the images of a NixOS configuration's disko layout, made
# by mkdisk in an ordinary derivation: no VM, no KVM) and `layoutJSON`.
#
# Contract (other code calls this with a small stub `pkgs` and stub configurations):
# - only `builtins`, no nixpkgs `lib`;
# - of `pkgs` (the configuration's) only: grub2, grub2_efi, systemd, stdenv.hostPlatform.system;
#   of `buildPkgs` (the build machine's, default `pkgs`) only: runCommand, writeText,
#   closureInfo, callPackage, zstd;
# - of the configuration only: disko.devices, disko.imageBuilder.{imageFormat (raw, qcow2, and
#   mkdisk's raw.zst, raw.gz, vhd; the `format` argument overrides it),name,
#   copyNixStore,extraPostVM}, system.build.toplevel, systemd.package and
#   boot.loader.{timeout,efi,grub,systemd-boot}.
#
# Boot loaders, each on its own (the README lists what maps and what is ignored):
# - systemd-boot when boot.loader.systemd-boot.enable: --systemd-boot with the EFI binary of
#   systemd.package, --systemd-boot-console-mode (consoleMode), --no-systemd-boot-editor;
# - GRUB when boot.loader.grub.enable (NixOS's default: on unless systemd-boot is):
#   for BIOS on every disk named by grub.device, grub.devices and grub.mirroredBoots.*.devices
#   (unless all are "nodev"): --grub ${grub2}/lib/grub --grub-disk NAME; for EFI when
#   grub.efiSupport: --grub ${grub2_efi}/lib/grub --grub-efi (--grub-efi-id efiBootloaderId
#   unless efiInstallAsRemovable); grub.extraConfig, grub.extraEntries;
# - boot.loader.timeout → --boot-timeout (absent or null: left out, mkdisk's default 5 is
#   NixOS's); none enabled (or GRUB with neither BIOS devices nor efiSupport) → --no-bootloader.
# Without disko.imageBuilder.copyNixStore (default true) there is no NixOS content and no boot
# loader option at all. The builder runs `mkdisk build layout.json --out $out --quiet --seed S
# ...` with SOURCE_DATE_EPOCH=1 unless the builder has one, then extraPostVM (zstd on PATH);
# --threads comes from $NIX_BUILD_CORES inside mkdisk.
# Ignored (no image-time meaning, or not mapped yet): boot.loader.efi.canTouchEfiVariables,
# efiSysMountPoint (the layout says where the ESP is mounted), grub.{configurationLimit,
# useOSProber, splashImage, theme, font, gfxmode*, backgroundColor, users, extraFiles,
# extraPrepareConfig, extraInstallCommands, copyKernels, fsIdentifier, zfsSupport,
# enableCryptodisk, forceInstall, mirroredBoots.*.path, extraEntriesBeforeNixOS, memtest86},
# systemd-boot.{configurationLimit, extraEntries, extraFiles, memtest86, netbootxyz,
# graceful, installDeviceTree, extraInstallCommands}.
# `pkgs` is the configuration's (the target's: its systemd, GRUB and hostPlatform); `buildPkgs`
# the build machine's (runCommand, writeText, closureInfo, zstd and mkdisk itself run there), so
# an aarch64 configuration's image builds on an x86_64 machine with no emulation.
{ pkgs, buildPkgs ? pkgs, mkdisk ? buildPkgs.callPackage ./package.nix { } }:
let
  # Every attribute whose name starts with `_` removed, recursively (disko's functions,
  # scripts and parent links).
  strip = v:
    if builtins.isAttrs v then
      builtins.listToAttrs (map (n: { name = n; value = strip v.${n}; })
        (builtins.filter (n: builtins.substring 0 1 n != "_") (builtins.attrNames v)))
    else if builtins.isList v then map strip v
    else v;

  layoutJSON = devices: builtins.toJSON (strip devices);

  # The seed when none is given: fixed, so that two builds are bit-identical.
  defaultSeed = "mkdisk-nix-default-seed";

  quote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
  flag = cond: args: if cond then args else [ ];
  unique = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;

  efiArch = {
    "x86_64-linux" = "x64";
    "aarch64-linux" = "aa64";
    "riscv64-linux" = "riscv64";
  }.${pkgs.stdenv.hostPlatform.system} or (throw "mkdisk: no EFI architecture for ${pkgs.stdenv.hostPlatform.system}");

  # mkdisk's --arch: the architecture of the system double (the toplevel's bootspec must agree).
  arch = builtins.head (builtins.split "-" pkgs.stdenv.hostPlatform.system);

  # The disko disk whose `device` is `dev`.
  diskOf = disks: dev:
    let names = builtins.filter (n: (disks.${n}.device or null) == dev) (builtins.attrNames disks);
    in if names != [ ] then builtins.head names
    else throw "mkdisk: boot.loader.grub.devices names ${dev}, which is the device of no disk in disko.devices.disk";

  # mirroredBoots is a list in NixOS; an attribute set of mirrors is accepted too.
  values = v: if builtins.isAttrs v then map (n: v.${n}) (builtins.attrNames v) else v;

  # The mkdisk options for the configuration's boot loaders (see the top of this file).
  bootArgs = config:
    let
      loader = config.boot.loader or { };
      sd = loader.systemd-boot or { };
      grub = loader.grub or { };
      sdOn = sd.enable or false;
      # NixOS enables GRUB by default; its systemd-boot module turns that default off.
      grubOn = grub.enable or (!sdOn);
      # An evaluated NixOS configuration already has grub.device in grub.devices, and
      # grub.devices in mirroredBoots: each device once, in order.
      devices = unique (builtins.filter (d: d != "")
        ([ (grub.device or "") ] ++ (grub.devices or [ ])
          ++ builtins.concatLists (map (m: m.devices or [ ]) (values (grub.mirroredBoots or [ ])))));
      biosDevices = builtins.filter (d: d != "nodev") devices;
      bios = grubOn && biosDevices != [ ];
      efi = grubOn && (grub.efiSupport or false);
      # An evaluated configuration always has efiBootloaderId; NixOS's default for an ESP at /boot.
      efiId = grub.efiBootloaderId or "NixOS-boot";
      sdPackage = config.systemd.package or pkgs.systemd;
      text = name: s: flag (s != "") [ (buildPkgs.writeText name s) ];
      timeout = loader.timeout or null;
    in
    if !sdOn && !bios && !efi then [ "--no-bootloader" ]
    else
      flag sdOn ([ "--systemd-boot" "${sdPackage}/lib/systemd/boot/efi/systemd-boot${efiArch}.efi"
                   "--systemd-boot-console-mode" (sd.consoleMode or "keep") ]
                 ++ flag ((sd.editor or true) == false) [ "--no-systemd-boot-editor" ])
      ++ flag bios ([ "--grub" "${pkgs.grub2}/lib/grub" ]
                    ++ builtins.concatMap (d: [ "--grub-disk" (diskOf (config.disko.devices.disk or { }) d) ]) biosDevices)
      ++ flag efi ([ "--grub" "${pkgs.grub2_efi}/lib/grub" "--grub-efi" ]
                   ++ flag (!(grub.efiInstallAsRemovable or false)) [ "--grub-efi-id" efiId ])
      ++ flag (bios || efi) (builtins.concatMap (f: flag (f.file != [ ]) ([ f.flag ] ++ f.file)) [
           { flag = "--grub-extra-config"; file = text "grub-extra-config" (grub.extraConfig or ""); }
           { flag = "--grub-extra-entries"; file = text "grub-extra-entries" (grub.extraEntries or ""); }
         ])
      ++ flag (timeout != null) [ "--boot-timeout" (toString timeout) ];

  diskImages =
    { nixosConfiguration ? null
    , config ? nixosConfiguration.config
    , seed ? null
    , format ? null
    , bmap ? false
    , extraArgs ? [ ]
    }:
    let
      ib = config.disko.imageBuilder or { };
      imageFormat = if format != null then format else ib.imageFormat or "raw";
      copy = ib.copyNixStore or true;
      toplevel = config.system.build.toplevel;
      layout = buildPkgs.writeText "disko-layout.json" (layoutJSON config.disko.devices);
      nixos = flag copy ([ "--closure" (buildPkgs.closureInfo { rootPaths = [ toplevel ]; }) "--system" toplevel "--arch" arch ]
        ++ bootArgs config);
      formats = [ "raw" "raw.zst" "raw.gz" "qcow2" "vhd" ];
      args = [ "--seed" (if seed != null then seed else defaultSeed) "--format" imageFormat ]
        ++ flag bmap [ "--bmap" ] ++ nixos ++ extraArgs;
    in
    if !(builtins.elem imageFormat formats) then
      throw ("mkdisk: disko.imageBuilder.imageFormat = \"${toString imageFormat}\" is not a format mkdisk "
        + "writes (${builtins.concatStringsSep ", " formats})")
    else
      buildPkgs.runCommand (ib.name or "mkdisk-images") { } ''
        export SOURCE_DATE_EPOCH=''${SOURCE_DATE_EPOCH:-1}
        export PATH=${buildPkgs.zstd}/bin''${PATH:+:$PATH}
        mkdir -p "$out"
        ${mkdisk}/bin/mkdisk build ${layout} --out "$out" --quiet ${builtins.concatStringsSep " " (map quote args)}
        ${ib.extraPostVM or ""}
      '';
in
{
  inherit diskImages layoutJSON;
}
