#!/usr/bin/env python3
"""Writes an OCI image layout with one image whose layers have the given sizes (MiB),
filled with deterministic pseudo-random bytes. Usage: make-layout.py DIR REF SIZE_MIB..."""
import hashlib, json, os, random, sys

def main():
    root, ref, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
    def put(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
    rng = random.Random(42)
    # 1 MiB of seeded bytes per step; randbytes cannot make 256 MiB in one call
    layers = [put(b"".join(rng.randbytes(1 << 20) for _ in range(mib)), "application/vnd.oci.image.layer.v1.tar") for mib in sizes]
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
