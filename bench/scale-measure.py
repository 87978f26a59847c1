#!/usr/bin/env python3
"""The measurements of bench/scale.sh on one data directory written by bench/scale-gen.py.

    python3 bench/scale-measure.py --bin BIN --data DIR [--runs N] [--no-real-gc]   # one JSON line
    python3 bench/scale-measure.py --table RESULTS.jsonl                             # markdown table

Measures, with the release binary:
- start-up: exec of `serve --offline` to its "listening" line, to the first /healthz 200, and
  then to the first /readyz 200 (it queries the index); median of --runs;
- warm manifest hit: wrk -t1 -c4 -d5s --latency on one manifest by digest (after a first GET
  that must be 200), p50/p99 and requests/s; then the server's VmHWM (peak RSS);
- random manifest hits: 2000 sequential GETs on one keep-alive connection, each of a manifest
  picked at random among all images (so most miss the in-memory manifest cache), p50/p99;
- `ls` (wall time, lines, peak RSS), median of --runs;
- `gc --dry-run` with a cap above the total (the walk of the store for unindexed files, no
  eviction), and with a cap of 90 % of the total (the same walk plus the eviction plan);
- the real `gc` at 90 %, once, last: it deletes the rows and files, so the directory is then
  spent (the script regenerates it next time).
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request

ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def wait_ok(port, path, timeout):
    """Polls GET path until it answers 200."""
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.002)


def median(xs):
    return statistics.median(xs) if xs else None


def start_server(binary, data):
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "serve", "--offline", "--data-dir", data, "--listen", "127.0.0.1:0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in proc.stdout:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise SystemExit("the server did not start")
    t_listen = time.perf_counter() - t0
    wait_ok(port, "/healthz", timeout=5)
    t_health = time.perf_counter() - t0
    wait_ok(port, "/readyz", timeout=30)  # /readyz queries the index and writes a probe file
    t_ready = time.perf_counter() - t0
    return proc, port, t_listen, t_health, t_ready


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def wrk_ms(text, label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % re.escape(label), text, re.M)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def timed(cmd):
    """Wall seconds, stdout and peak RSS (KiB, from /usr/bin/time) of a command."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss=%M"] + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(cmd), p.stderr[-2000:]))
    rss = int(re.findall(r"maxrss=(\d+)", p.stderr)[-1])
    return wall, p.stdout, rss


def measure(args):
    gen = json.load(open(os.path.join(args.data, "gen.json")))
    out = {"images": gen["images"], "blobs": gen["blobs"], "bytes": gen["bytes"]}
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(args.data, "index.sqlite"), uri=True)
    pairs = db.execute(
        "SELECT r.name, t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id").fetchall()
    db.close()

    listen, health, ready = [], [], []
    for _ in range(args.runs):
        proc, port, t_listen, t_health, t_ready = start_server(args.bin, args.data)
        listen.append(t_listen)
        health.append(t_health)
        ready.append(t_ready)
        stop_server(proc)
    out["startup_listen_s"] = median(listen)
    out["startup_healthz_s"] = median(health)
    out["startup_readyz_s"] = median(ready)
    out["startup_healthz_runs"] = health

    proc, port, _, _, _ = start_server(args.bin, args.data)
    try:
        url = "http://127.0.0.1:%d/v2/%s/manifests/%s" % (port, gen["repository"], gen["digest"])
        req = urllib.request.Request(url, headers={"Accept": ACCEPT})
        with urllib.request.urlopen(req) as r:
            assert r.status == 200, r.status
        w = subprocess.run(["wrk", "-t1", "-c4", "-d%ds" % args.wrk_seconds, "--latency", "-H", "Accept: " + ACCEPT, url],
                           capture_output=True, text=True, check=True).stdout
        if re.search(r"Non-2xx|Socket errors", w):
            raise SystemExit("wrk saw errors:\n" + w)
        out["warm_p50_ms"] = wrk_ms(w, "50%")
        out["warm_p99_ms"] = wrk_ms(w, "99%")
        out["warm_rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))

        rng = random.Random(11)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        lat = []
        for _ in range(args.random_requests):
            repo, digest = rng.choice(pairs)
            t0 = time.perf_counter()
            conn.request("GET", "/v2/%s/manifests/%s" % (repo, digest), headers={"Accept": ACCEPT})
            r = conn.getresponse()
            r.read()
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200, r.status
        conn.close()
        lat.sort()
        out["random_p50_ms"] = lat[len(lat) // 2]
        out["random_p99_ms"] = lat[int(len(lat) * 0.99)]
        out["serve_vmhwm_mib"] = status_kib(proc.pid, "VmHWM") / 1024
    finally:
        stop_server(proc)

    d = ["--data-dir", args.data]
    ls = [timed([args.bin, "ls"] + d) for _ in range(args.runs)]
    out["ls_s"] = median([x[0] for x in ls])
    out["ls_lines"] = len(ls[0][1].splitlines())
    out["ls_maxrss_mib"] = max(x[2] for x in ls) / 1024

    total = gen["bytes"]
    walk = [timed([args.bin, "gc", "--dry-run", "--max-size", str(total * 10)] + d) for _ in range(args.runs)]
    out["gc_dry_nocap_s"] = median([x[0] for x in walk])
    cap = str(total * 9 // 10)
    dry = [timed([args.bin, "gc", "--dry-run", "--max-size", cap] + d) for _ in range(args.runs)]
    out["gc_dry_90_s"] = median([x[0] for x in dry])
    out["gc_dry_90_images"] = sum(1 for line in dry[0][1].splitlines() if line.startswith("would evict"))
    out["gc_dry_maxrss_mib"] = max(x[2] for x in dry) / 1024
    if args.real_gc:
        wall, stdout, rss = timed([args.bin, "gc", "--max-size", cap] + d)
        os.remove(os.path.join(args.data, "gen.json"))  # spent: regenerate next time
        out["gc_real_90_s"] = wall
        out["gc_real_90_images"] = sum(1 for line in stdout.splitlines() if line.startswith("evicted "))
        out["gc_real_maxrss_mib"] = rss / 1024
    print(json.dumps(out))


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return "%.*f" % (digits, v)
    return str(v)


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rows.sort(key=lambda r: r["blobs"])
    head = ["measure"] + ["%s blobs / %s images" % (format(r["blobs"], ","), format(r["images"], ",")) for r in rows] + ["target"]
    spec = [
        ("start-up to \"listening\", s", "startup_listen_s", 3, ""),
        ("start-up to first /healthz 200, s", "startup_healthz_s", 3, "< 1 s at 1M"),
        ("start-up to first /readyz 200 (index query, probe write), s", "startup_readyz_s", 3, ""),
        ("warm manifest hit p50, ms (wrk -t1 -c4)", "warm_p50_ms", 3, "within 10 % of 1k"),
        ("warm manifest hit p99, ms", "warm_p99_ms", 3, "within 10 % of 1k"),
        ("warm manifest hits/s", "warm_rps", 0, ""),
        ("random manifest hit p50, ms (1 connection)", "random_p50_ms", 3, ""),
        ("random manifest hit p99, ms", "random_p99_ms", 3, ""),
        ("server peak RSS (VmHWM) after both, MiB", "serve_vmhwm_mib", 1, "< 128 MiB"),
        ("`ls`, s", "ls_s", 3, ""),
        ("`ls` peak RSS, MiB", "ls_maxrss_mib", 1, ""),
        ("`gc --dry-run`, cap above total (store walk only), s", "gc_dry_nocap_s", 3, ""),
        ("`gc --dry-run`, cap 90 % (walk + eviction plan), s", "gc_dry_90_s", 3, ""),
        ("  images it would evict", "gc_dry_90_images", 0, ""),
        ("`gc` dry-run peak RSS, MiB", "gc_dry_maxrss_mib", 1, ""),
        ("`gc`, cap 90 %, real pass, s", "gc_real_90_s", 3, "< 2 s at 100k images"),
        ("  images evicted", "gc_real_90_images", 0, ""),
        ("`gc` real pass peak RSS, MiB", "gc_real_maxrss_mib", 1, ""),
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, key, digits, target in spec:
        cells = [fmt(r.get(key), digits) for r in rows]
        print("| " + " | ".join([label] + cells + [target]) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--data")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--random-requests", type=int, default=2000)
    ap.add_argument("--no-real-gc", dest="real_gc", action="store_false")
    ap.add_argument("--table")
    args = ap.parse_args()
    if args.table:
        table(args.table)
    else:
        measure(args)


if __name__ == "__main__":
    main()
