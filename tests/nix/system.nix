# A fake NixOS toplevel shaped like a real one for mkdisk: boot.json (bootspec v1, with the
# org.nixos.systemd-boot extension where `systemdBootExt`), init, and links to the kernel,
# initrd and systemd, so that they are in its closure. `kernel`/`initrd`: host files to boot
# (the boot harness's), else fake ones.
{ pkgs, kernel ? null, initrd ? null, params ? [ "console=ttyS0" ], systemdBootExt ? true, noBootJson ? false
, system ? pkgs.stdenv.hostPlatform.system, systemd ? pkgs.systemd }:
let
  file = name: host: fake:
    if host != null then "${builtins.path { path = host; inherit name; }}"
    else "${pkgs.runCommand name { } "mkdir $out; echo ${fake} > $out/${fake}"}/${fake}";
  kernelPath = file "linux-6.1.0" kernel "bzImage";
  initrdPath = file "initrd-linux-6.1.0" initrd "initrd";
  bootJson = builtins.toJSON ({
    "org.nixos.bootspec.v1" = {
      init = "${builtins.placeholder "out"}/init";
      initrd = initrdPath;
      kernel = kernelPath;
      kernelParams = params;
      label = "NixOS 24.05 (Linux 6.1.0)";
      inherit system;
      toplevel = builtins.placeholder "out";
    };
  } // (if systemdBootExt then { "org.nixos.systemd-boot".sortKey = "nixos"; } else { }));
in
pkgs.runCommand "nixos-system-mkdisktest-24.05" { inherit bootJson; } ''
  mkdir $out
  ${if noBootJson then "" else ''printf '%s' "$bootJson" > $out/boot.json''}
  printf '#!/bin/sh\n' > $out/init
  chmod +x $out/init
  ln -s ${kernelPath} $out/kernel
  ln -s ${initrdPath} $out/initrd
  ln -s ${systemd} $out/systemd
''
