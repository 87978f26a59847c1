#!/usr/bin/env python3
"""Writes a synthetic registry-mirror data directory for bench/scale.sh.

    python3 bench/scale-gen.py DATA_DIR BLOBS [--index-only]

BLOBS / 10 images, each one OCI image manifest, one config and 8 layers of a few bytes
(10 blobs, none shared), 10 images (tags v0..v9) per repository under the upstream
"docker.io". Every blob is a real file under DATA_DIR/blobs/sha256/xx/<hex> whose bytes
hash to its name; the schema is created by the binary itself (`registry-mirror ls` on the
empty directory), and the rows follow what MetadataIndex.record(_:) writes for a pulled image. Image i
was last used at a time that grows with i, in a shuffled order, so eviction has an LRU order
to follow that is not the insertion order.

--index-only writes the rows but no files: for timing index work alone (an eviction plan
with `gc --dry-run`), in a minute or two at 1M blobs instead of seven.

Prints one JSON line: images, blobs, bytes, and a sample manifest (repository, digest).
"""
import hashlib
import json
import os
import random
import sqlite3
import sys
import time

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYERS_PER_IMAGE = 8
IMAGES_PER_REPOSITORY = 10


def main():
    data, count = sys.argv[1], int(sys.argv[2])
    index_only = "--index-only" in sys.argv[3:]
    images = count // (2 + LAYERS_PER_IMAGE)
    blobs_root = os.path.join(data, "blobs", "sha256")
    for i in range(256):
        os.makedirs(os.path.join(blobs_root, "%02x" % i), exist_ok=True)
    os.makedirs(os.path.join(data, "tmp"), exist_ok=True)

    def put(content):
        hexd = hashlib.sha256(content).hexdigest()
        if index_only:
            return "sha256:" + hexd, len(content)
        fd = os.open(os.path.join(blobs_root, hexd[:2], hexd), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, content)
        os.close(fd)
        return "sha256:" + hexd, len(content)

    now = int(time.time())
    base_ms = (now - 86400) * 1000
    order = list(range(images))
    random.Random(11).shuffle(order)  # order[i]: image i's rank in LRU order

    blob_rows, manifest_rows, reference_rows, link_rows, tag_rows = [], [], [], [], []
    repositories = (images + IMAGES_PER_REPOSITORY - 1) // IMAGES_PER_REPOSITORY
    total = 0
    sample = None
    for i in range(images):
        repo_id = i // IMAGES_PER_REPOSITORY + 1
        used_ms = base_ms + order[i] * 10
        layers = [put(b"scale image %d layer %d\n" % (i, n)) for n in range(LAYERS_PER_IMAGE)]
        config = put(json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2026-11-30T00:00:00Z",
            "config": {"Labels": {"bench.scale.image": str(i)}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }, separators=(",", ":")).encode())
        document = {
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": LAYER, "digest": d, "size": s} for d, s in layers],
        }
        manifest = put(json.dumps(document, indent=2).encode())
        for d, s in [manifest, config] + layers:
            blob_rows.append((d, s, now, used_ms, 0))
            link_rows.append((repo_id, d))
            total += s
        manifest_rows.append((manifest[0], MANIFEST, manifest[1], None, CONFIG, None))
        for d, _ in [config] + layers:
            reference_rows.append((manifest[0], d))
        tag_rows.append((repo_id, "v%d" % (i % IMAGES_PER_REPOSITORY), manifest[0], MANIFEST, now))
        if sample is None and i == images // 2:
            sample = ("scale/r%06d" % repo_id, manifest[0])

    db_path = os.path.join(data, "index.sqlite")
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    # The schema is the binary's own (scale.sh runs `registry-mirror ls` on the empty
    # directory first), so this generator can never drift from Migrations.swift.
    if db.execute("PRAGMA user_version").fetchone()[0] == 0:
        sys.exit("no schema in %s: create it with `registry-mirror ls --data-dir %s` first" % (db_path, data))
    db.execute("BEGIN")
    db.execute("INSERT INTO upstreams(id, name) VALUES (1, 'docker.io')")
    db.executemany("INSERT INTO repositories(id, upstream_id, name) VALUES (?, 1, ?)",
                   [(r, "scale/r%06d" % r) for r in range(1, repositories + 1)])
    db.executemany("INSERT INTO blobs(digest, size, added_at, last_access_ms, pinned) VALUES (?, ?, ?, ?, ?)", sorted(blob_rows))
    db.executemany("INSERT INTO manifests(digest, media_type, size, subject, artifact_type, annotations) VALUES (?, ?, ?, ?, ?, ?)",
                   sorted(manifest_rows))
    db.executemany("INSERT INTO manifest_references(manifest, blob) VALUES (?, ?)", sorted(reference_rows))
    db.executemany("INSERT INTO repository_blobs(repository_id, digest) VALUES (?, ?)", sorted(link_rows))
    db.executemany("INSERT INTO tags(repository_id, name, digest, media_type, checked_at) VALUES (?, ?, ?, ?, ?)", tag_rows)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(json.dumps({"images": images, "blobs": len(blob_rows), "bytes": total,
                      "repository": sample[0], "digest": sample[1]}))


if __name__ == "__main__":
    main()
