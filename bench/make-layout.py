#!/usr/bin/env python3
"""Writes an OCI image layout with one image whose layers have the given sizes (MiB),
filled with deterministic pseudo-random bytes. Prints the first layer's digest.
Usage: make-layout.py [--gzip] [--seed N] DIR REF SIZE_MIB...
--gzip stores each layer as gzip level 0 (same size; skopeo then pushes it as it is,
instead of compressing an uncompressed layer on the way)."""
import gzip, hashlib, json, os, random, sys

def main():
    args = sys.argv[1:]
    use_gzip = "--gzip" in args
    args = [a for a in args if a != "--gzip"]
    seed = 42
    if args[0] == "--seed":
        seed, args = int(args[1]), args[2:]
    root, ref, sizes = args[0], args[1], [int(s) for s in args[2:]]
    os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
    def put(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
    rng = random.Random(seed)
    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if use_gzip else "")
    def layer(mib):
        # 1 MiB of seeded bytes per step; randbytes cannot make 256 MiB in one call
        data = b"".join(rng.randbytes(1 << 20) for _ in range(mib))
        return gzip.compress(data, compresslevel=0, mtime=0) if use_gzip else data
    layers = [put(layer(mib), layer_type) for mib in sizes]
    config = put(json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode(),
                 "application/vnd.oci.image.config.v1+json")
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config, "layers": layers}).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with open(f"{root}/oci-layout", "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(f"{root}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
    print(layers[0]["digest"] if layers else manifest["digest"])

main()
