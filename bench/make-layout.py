#!/usr/bin/env python3
"""Deterministic synthetic images for the benchmarks, as OCI image layouts.

Layers are seeded pseudo-random bytes (incompressible, reproducible), stored as gzip level 0
(same size; skopeo then pushes a layer as it is instead of compressing it on the way).

Two ways to call it:

  make-layout.py set DIR [--quick]
      Writes the benchmark's whole image set, one OCI layout per image, under DIR:
        DIR/big      bench/big:v1      3 layers of 1, 32 and 256 MiB (--quick: 1, 4 and 16 MiB)
        DIR/small    bench/small:v1    3 layers of 4 KiB, 256 KiB and 2 MiB
        DIR/multi    bench/multi:v1    an index of 3 platforms (linux/amd64, linux/arm64,
                                       linux/arm/v7), each 2 layers of 64 KiB and 1 MiB
        DIR/repo-NN  bench/repo-NN:v1  NN = 01..50: 3 layers of 4 KiB, 64 KiB and 512 KiB each
      Every image has its own seed, so no two share a layer. DIR/images.env holds shell
      variables: sizes in bytes of what a one-platform pull fetches (index, manifest, config,
      layers), and the digests the benchmark asks for by name.

  make-layout.py [--gzip] [--seed N] DIR REF SIZE...
      One image with layers of the given sizes (MiB, or KiB with a K suffix); prints the first
      layer's digest.
"""
import gzip, hashlib, json, os, random, sys

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def size_bytes(s):
    return int(s[:-1]) << 10 if s.upper().endswith("K") else int(s) << 20


class Layout:
    def __init__(self, root):
        self.root = root
        os.makedirs(f"{root}/blobs/sha256", exist_ok=True)

    def put(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(f"{self.root}/blobs/sha256/{digest}", "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(self, sizes, seed, use_gzip=True, platform=("linux", "amd64", None)):
        """Writes layers, config and manifest; returns (manifest descriptor, layer descriptors)."""
        rng = random.Random(seed)
        layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if use_gzip else "")

        def layer(n):
            # at most 1 MiB of seeded bytes per randbytes call; it cannot make 256 MiB at once
            data = b"".join(rng.randbytes(min(1 << 20, n - i)) for i in range(0, n, 1 << 20))
            return gzip.compress(data, compresslevel=0, mtime=0) if use_gzip else data

        layers = [self.put(layer(n), layer_type) for n in sizes]
        os_, arch, variant = platform
        cfg = {"architecture": arch, "os": os_,
               "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}
        if variant:
            cfg["variant"] = variant
        config = self.put(json.dumps(cfg).encode(), OCI_CONFIG)
        manifest = self.put(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                        "config": config, "layers": layers}).encode(), OCI_MANIFEST)
        manifest["_pull_size"] = manifest["size"] + config["size"] + sum(l["size"] for l in layers)
        return manifest, layers

    def index(self, children):
        """children: [(manifest descriptor, (os, arch, variant))]; returns the index descriptor."""
        manifests = []
        for m, (os_, arch, variant) in children:
            p = {"architecture": arch, "os": os_}
            if variant:
                p["variant"] = variant
            manifests.append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                              "platform": p})
        return self.put(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                    "manifests": manifests}).encode(), OCI_INDEX)

    def finish(self, top, ref):
        desc = {k: v for k, v in top.items() if not k.startswith("_")}
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        with open(f"{self.root}/oci-layout", "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(f"{self.root}/index.json", "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [desc]}, f)


def bench_set(root, quick):
    env = {}
    big_sizes = ["1", "4", "16"] if quick else ["1", "32", "256"]
    big = Layout(f"{root}/big")
    m, layers = big.image([size_bytes(s) for s in big_sizes], seed=42)
    big.finish(m, "v1")
    env.update(BIG_SIZE=m["_pull_size"], BIG_MANIFEST=m["digest"], BIG_LAYER=layers[-1]["digest"],
               BIG_LAYER_SIZE=layers[-1]["size"], BIG_LAYERS_MIB=" ".join(big_sizes))

    small = Layout(f"{root}/small")
    m, _ = small.image([size_bytes(s) for s in ("4K", "256K", "2")], seed=7)
    small.finish(m, "v1")
    env.update(SMALL_SIZE=m["_pull_size"], SMALL_MANIFEST=m["digest"])

    multi = Layout(f"{root}/multi")
    platforms = [("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7")]
    children = [(multi.image([size_bytes("64K"), size_bytes("1")], seed=100 + i, platform=p)[0], p)
                for i, p in enumerate(platforms)]
    idx = multi.index(children)
    multi.finish(idx, "v1")
    # skopeo on this (amd64) machine pulls the index and the amd64 child
    env.update(MULTI_SIZE=idx["size"] + children[0][0]["_pull_size"], MULTI_INDEX=idx["digest"])

    total = 0
    for n in range(1, 51):
        r = Layout(f"{root}/repo-{n:02d}")
        m, _ = r.image([size_bytes(s) for s in ("4K", "64K", "512K")], seed=1000 + n)
        r.finish(m, "v1")
        total += m["_pull_size"]
    env.update(REPOS_SIZE=total, REPOS_COUNT=50)

    with open(f"{root}/images.env", "w") as f:
        for k, v in env.items():
            f.write(f"{k}='{v}'\n")


def main():
    args = sys.argv[1:]
    if args and args[0] == "set":
        bench_set(args[1], "--quick" in args[2:])
        return
    use_gzip = "--gzip" in args
    args = [a for a in args if a != "--gzip"]
    seed = 42
    if args[0] == "--seed":
        seed, args = int(args[1]), args[2:]
    root, ref, sizes = args[0], args[1], [size_bytes(s) for s in args[2:]]
    layout = Layout(root)
    m, layers = layout.image(sizes, seed, use_gzip)
    layout.finish(m, ref)
    print(layers[0]["digest"] if layers else m["digest"])


main()
