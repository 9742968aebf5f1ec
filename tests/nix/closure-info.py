# closureInfo's builder for the stub pkgs (stub-pkgs.nix): store-paths, registration and
# total-nar-size from the exportReferencesGraph that Nix 2.8 writes into
# $NIX_BUILD_TOP/.attrs.json (its NIX_ATTRS_JSON_FILE names the host's build directory, not the
# sandbox's), byte for byte what nixpkgs' closure-info.nix makes with jq:
#   .closure | map(.narSize) | add                                  > total-nar-size
#   .closure | map([.path, .narHash, .narSize, "", (.references | length)] + .references)
#            | add | map("\(.)\n") | add   (jq -r, then head -n -1)  > registration
#   .closure[].path                                                 > store-paths
# (the closure comes sorted by path, each path's references sorted).
import json
import os

attrs = json.load(open(os.path.join(os.environ["NIX_BUILD_TOP"], ".attrs.json")))
out = attrs["outputs"]["out"]
closure = attrs.get("closure", [])
os.mkdir(out)
with open(os.path.join(out, "store-paths"), "w") as f:
    f.writelines(p["path"] + "\n" for p in closure)
with open(os.path.join(out, "total-nar-size"), "w") as f:
    f.write(str(sum(p["narSize"] for p in closure)) + "\n")
with open(os.path.join(out, "registration"), "w") as f:
    for p in closure:
        f.write(f"{p['path']}\n{p['narHash']}\n{p['narSize']}\n\n{len(p['references'])}\n")
        f.writelines(r + "\n" for r in p["references"])
