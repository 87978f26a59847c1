#!/usr/bin/env python3
"""Turns bench/run.sh's per-run records into one markdown table and, at the end, the ratios
of registry-mirror to the others with their targets; prints them, and with --doc writes them
into docs/benchmarks.md between the "latest run" markers (nothing else changes).

Usage: report.py RESULTS IMAGES_ENV [--doc FILE] [--command CMD] [--load-before L]
                 [--load-after L] [--elapsed SECONDS] [--runs N] [--hf-runs N] [--wrk-seconds N]
                 [--wrk-cpus CPUS] [--wrk-load ARGS] [--blob-readers N]
RESULTS has one record a line: "RUN KEY VALUE". Keys end in the contender: mirror, v3
(distribution v3.1.1), proxy (distribution 2.8.2), nginx; mirror_info is the mirror at its
default log level. Ratios are taken within each run, then the median over runs is shown with
the spread (min–max) of the runs."""
import argparse, datetime, os, platform, re, shlex, shutil, statistics, subprocess, sys
from collections import defaultdict

BEGIN = "<!-- bench:latest-run:begin (written by bench/run.sh; edit outside these markers) -->"
END = "<!-- bench:latest-run:end -->"
K = ("mirror", "v3", "proxy")  # the caches, in the table's column order; nginx is a reference


def load(results):
    runs = defaultdict(dict)
    for line in open(results):
        run, key, value = line.split()
        runs[int(run)][key] = float(value)
    return [runs[r] for r in sorted(runs)]


def env_file(path):
    return {k: v.strip("'") for k, v in (l.strip().split("=", 1) for l in open(path) if "=" in l)}


def cmd_out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine():
    cpuinfo = open("/proc/cpuinfo").read()
    cpu = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    vm = " (a virtual machine)" if re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M) else ""
    mem = int(re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read()).group(1))
    debian = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    swift = re.search(r"Swift version (\S+)", cmd_out("swift", "--version"))
    registry = re.search(r"(\d+\.\d+\.\d+\S*)", cmd_out("docker-registry", "--version"))
    nginx = re.search(r"nginx/(\S+)", subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
                      if shutil.which("nginx") else "")
    skopeo = re.search(r"version (\S+)", cmd_out("skopeo", "--version"))
    curl = cmd_out("curl", "--version").split()[1:2]
    wrk = re.search(r"wrk (\S+)", cmd_out("wrk", "-v") or "")
    hyperfine = cmd_out("hyperfine", "--version").split()[-1:]
    return {
        "nproc": cmd_out("nproc"),
        "memory": f"{mem / 1048576:.1f} GiB",
        "cpu": (cpu.group(1) if cpu else "?") + vm,
        "kernel": f"Linux {platform.release()}",
        "debian": debian,
        "swift": swift.group(1) if swift else "?",
        "distribution": registry.group(1) if registry else "?",
        "nginx": nginx.group(1) if nginx else "?",
        "tools": f"skopeo {skopeo.group(1) if skopeo else '?'}, curl {''.join(curl) or '?'}, "
                 f"wrk {wrk.group(1) if wrk else '?'}, hyperfine {''.join(hyperfine) or '?'}",
    }


class Series:
    """One measure's per-run values."""
    def __init__(self, values):
        self.values = [v for v in values if v is not None]

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None

    def cell(self, fmt):
        if not self.values:
            return "—"
        lo, hi, med = min(self.values), max(self.values), self.median
        s = fmt.format(med)
        if len(self.values) > 1 and fmt.format(lo) != fmt.format(hi):
            s += f" ({fmt.format(lo)}–{fmt.format(hi)})"
        return s


def per_run(runs, f):
    out = []
    for r in runs:
        try:
            out.append(f(r))
        except (KeyError, ZeroDivisionError):
            out.append(None)
    return Series(out)


def met(series, op, target):
    if series.median is None:
        return "—"
    ok = {"<=": lambda v: v <= target, ">=": lambda v: v >= target}[op]
    verdict = "yes" if ok(series.median) else "**no**"
    n = sum(ok(v) for v in series.values)
    if len(series.values) > 1 and n not in (0, len(series.values)):
        verdict += f", {n} of {len(series.values)} runs"
    return verdict


def table(runs, img, a):
    big, small, multi, repos = (float(img[k]) for k in ("BIG_SIZE", "SMALL_SIZE", "MULTI_SIZE", "REPOS_SIZE"))
    big_mib = big / 1048576
    rows = []  # (measure, mirror, v3, proxy, nginx cells, target, met)

    def both(label, f, fmt, target="", rule=None, nginx=False):
        """One row: a cell per cache (and nginx's when it serves the measure too)."""
        s = {k: per_run(runs, lambda r, k=k: f(r, k)) for k in K + ("nginx",) if nginx or k != "nginx"}
        rows.append((label, *(s[k].cell(fmt) for k in K), s["nginx"].cell(fmt) if nginx else "", target,
                     met(s["mirror"], *rule) if rule else ""))

    # The targets
    both(f"upstream bytes ÷ image size, 1 cold pull (skopeo, {big_mib:.0f} MiB image)",
         lambda r, k: r[f"big.cold.bytes.{k}"] / big, "{:.2f}", "1.00", ("<=", 1.005))
    both("upstream bytes ÷ image size, 8 concurrent cold pulls of one image",
         lambda r, k: r[f"big8.bytes.{k}"] / big, "{:.2f}", "1.00", ("<=", 1.005))
    both("cold pull wall time ÷ direct pull from the upstream",
         lambda r, k: r[f"big.cold.{k}"] / r["big.warm.direct"], "{:.2f}", "≤ 1.05", ("<=", 1.05))
    both("warm pull wall time ÷ direct pull",
         lambda r, k: r[f"big.warm.{k}"] / r["big.warm.direct"], "{:.2f}", "≤ 1.00", ("<=", 1.00))
    layer_mib = float(img["BIG_LAYER_SIZE"]) / 1048576
    both(f"warm {layer_mib:.0f} MiB blob MB/s ÷ `cat` of the file (curl to /dev/null)",
         lambda r, k: r[f"blob.{k}"] / r["blob.cat"], "{:.2f}", "≥ 0.5", (">=", 0.5))
    both(f"peak RSS, 8 concurrent cold pulls of the {big_mib:.0f} MiB image, MiB",
         lambda r, k: r[f"big8.rss.{k}"], "{:.0f}", "≤ 64", ("<=", 64))
    both("upstream requests for a warm pull by tag within the TTL",
         lambda r, k: r[f"big.warm.reqs.{k}"], "{:.0f}", "0", ("<=", 0))
    # Extra rows
    rows.append(("*more measures*", "", "", "", "", "", ""))
    both("cold pull of the big image, seconds", lambda r, k: r[f"big.cold.{k}"], "{:.2f}")
    both("warm pull of the big image, seconds", lambda r, k: r[f"big.warm.{k}"], "{:.2f}")
    both(f"warm {layer_mib:.0f} MiB blob, MB/s", lambda r, k: r[f"blob.{k}"], "{:.0f}", nginx=True)
    both(f"warm {layer_mib:.0f} MiB blob, {a.blob_readers} concurrent curls, MB/s in all",
         lambda r, k: r[f"blob16.{k}"], "{:.0f}", nginx=True)

    wrk = f"wrk {a.wrk_load} on CPU {a.wrk_cpus}"
    both(f"warm manifest-by-digest requests/s ({wrk}; the mirror at log level error)", rps, "{:.0f}", nginx=True)
    both("the same, the mirror at its default log level (info)",
         lambda r, k: rps(r, "mirror_info" if k == "mirror" else k), "{:.0f}", nginx=True)
    both("server CPU per warm manifest request, µs (the mirror at error)", cpu, "{:.1f}", nginx=True)
    both("the same, the mirror at info", lambda r, k: cpu(r, "mirror_info" if k == "mirror" else k), "{:.1f}", nginx=True)
    both("upstream requests during the manifest wrk run", lambda r, k: r[f"manifest.reqs.{k}"], "{:.0f}")
    both("8 concurrent cold pulls of the big image, wall seconds", lambda r, k: r[f"big8.cold.{k}"], "{:.1f}")
    both("the same ÷ 8 concurrent direct pulls", lambda r, k: r[f"big8.cold.{k}"] / r["big8.direct"], "{:.2f}")
    both("peak RSS idle (after start), MiB", lambda r, k: r[f"idle.rss.{k}"], "{:.0f}")
    for label, name, size in (("small image (3 layers, {:.1f} MiB)", "small", small),
                              ("one platform of the 3-platform index ({:.1f} MiB)", "multi", multi)):
        lab = label.format(size / 1048576)
        both(f"{lab}: cold pull ÷ direct", lambda r, k, n=name: r[f"{n}.cold.{k}"] / r[f"{n}.warm.direct"], "{:.2f}")
        both(f"{lab}: warm pull ÷ direct", lambda r, k, n=name: r[f"{n}.warm.{k}"] / r[f"{n}.warm.direct"], "{:.2f}")
        both(f"{lab}: upstream bytes ÷ size, cold", lambda r, k, n=name, s=size: r[f"{n}.cold.bytes.{k}"] / s, "{:.2f}")
        both(f"{lab}: upstream requests, cold pull", lambda r, k, n=name: r[f"{n}.cold.reqs.{k}"], "{:.0f}")
        both(f"{lab}: upstream requests per warm pull", lambda r, k, n=name: r[f"{n}.warm.reqs.{k}"], "{:.0f}")
    count = img.get("REPOS_COUNT", "50")
    both(f"{count} small repositories ({repos / 1048576:.0f} MiB), cold, 8 at a time: wall seconds",
         lambda r, k: r[f"repos.cold.{k}"], "{:.1f}")
    both(f"{count} small repositories: wall time ÷ the same direct", lambda r, k: r[f"repos.cold.{k}"] / r["repos.direct"], "{:.2f}")
    both(f"{count} small repositories: upstream bytes ÷ their size", lambda r, k: r[f"repos.cold.bytes.{k}"] / repos, "{:.2f}")

    lines = ["| measure | registry-mirror | distribution v3.1.1 proxy | distribution 2.8.2 proxy | nginx, static files "
             "| target | met? |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]

    def ref(key, fmt):
        return per_run(runs, lambda r: r[key]).cell(fmt)
    notes = [
        "",
        f"Cells: median of {len(runs)} run(s), (min–max) of the runs when they differ. Ratios are taken within "
        "each run, then their median is shown. \"met?\" judges registry-mirror's median; \"k of n runs\" says "
        "when the runs disagree.",
        "",
        f"- Direct pull from the upstream (hyperfine median of {a.hf_runs} per run): big image "
        f"{ref('big.warm.direct', '{:.2f}')} s, small {ref('small.warm.direct', '{:.2f}')} s, one platform of the "
        f"index {ref('multi.warm.direct', '{:.2f}')} s; 8 concurrent direct pulls of the big image "
        f"{ref('big8.direct', '{:.1f}')} s; {count} repositories 8 at a time {ref('repos.direct', '{:.1f}')} s.",
        f"- Blob references, MB/s: `cat` {ref('blob.cat', '{:.0f}')}; registry-mirror with `--no-sendfile` "
        f"{ref('blob.nosendfile', '{:.0f}')}; a bare sendfile server with no HTTP stack "
        f"(`bench/sendfile-server.py`, the most curl drains) {ref('blob.bare', '{:.0f}')}.",
    ]
    tasks = sorted({int(k.rsplit(".", 1)[1]) for r in runs for k in r if k.startswith("inprocess.ops.")})
    if tasks:
        notes.append("- In process (`bench/inprocess.sh`: the warm manifest lookup through the router, no socket), "
                     "lookups/s by concurrent tasks: "
                     + "; ".join(f"{n} {ref(f'inprocess.ops.{n}', '{:.0f}')}" for n in tasks) + ".")
    errs = {k: sum(r.get(f"manifest.errors.{k}", 0) for r in runs) for k in K + ("mirror_info", "nginx")}
    if any(errs.values()):
        notes.append("- wrk saw errors (non-2xx or socket): " + ", ".join(f"{k} {v:.0f}" for k, v in errs.items())
                     + "; runs with errors are left out of the requests/s and CPU rows.")
    return "\n".join(lines + notes)


def rps(r, k):
    if r.get(f"manifest.errors.{k}", 0) > 0:
        raise KeyError("a measurement with errors is not a measurement")
    return r[f"manifest.rps.{k}"]


def cpu(r, k):
    rps(r, k)  # the same rule: a run with errors does not count
    return r[f"manifest.cpu_us.{k}"]


def ratios(runs, img, a):
    """The ratios of registry-mirror to the others and to its targets, each taken within a run."""
    big = float(img["BIG_SIZE"])
    rows = []

    def ratio(label, f, fmt, target="", rule=None):
        s = per_run(runs, f)
        if s.values:
            rows.append((label, s.cell(fmt), target, met(s, *rule) if rule else ""))

    ratio("warm manifest requests/s, ours (log level error) ÷ nginx", lambda r: rps(r, "mirror") / rps(r, "nginx"),
          "{:.2f}", "≥ 0.6", (">=", 0.6))
    ratio("the same, ours at the default log level (info) ÷ nginx", lambda r: rps(r, "mirror_info") / rps(r, "nginx"), "{:.2f}")
    ratio("server CPU per warm manifest request, ours at info ÷ distribution v3.1.1",
          lambda r: cpu(r, "mirror_info") / cpu(r, "v3"), "{:.2f}", "≤ 0.2", ("<=", 0.2))
    ratio("the same, ours at error ÷ distribution v3.1.1", lambda r: cpu(r, "mirror") / cpu(r, "v3"), "{:.2f}")
    ratio(f"warm blob, {a.blob_readers} concurrent curls, MB/s in all, ours ÷ nginx",
          lambda r: r["blob16.mirror"] / r["blob16.nginx"], "{:.2f}", "≥ 1.0", (">=", 1.0))
    ratio("warm blob, one curl, MB/s, ours ÷ nginx", lambda r: r["blob.mirror"] / r["blob.nginx"], "{:.2f}")
    ratio("warm manifest requests/s, ours ÷ distribution v3.1.1", lambda r: rps(r, "mirror") / rps(r, "v3"), "{:.1f}")
    ratio("warm manifest requests/s, ours ÷ distribution 2.8.2", lambda r: rps(r, "mirror") / rps(r, "proxy"),
          "{:.1f}", "≥ 10", (">=", 10))
    # The earlier targets, ours only (the table has every contender's).
    ratio("upstream bytes ÷ image size, 1 cold pull", lambda r: r["big.cold.bytes.mirror"] / big, "{:.2f}", "1.00", ("<=", 1.005))
    ratio("upstream bytes ÷ image size, 8 concurrent cold pulls", lambda r: r["big8.bytes.mirror"] / big, "{:.2f}", "1.00", ("<=", 1.005))
    ratio("cold pull ÷ direct", lambda r: r["big.cold.mirror"] / r["big.warm.direct"], "{:.2f}", "≤ 1.05", ("<=", 1.05))
    ratio("warm pull ÷ direct", lambda r: r["big.warm.mirror"] / r["big.warm.direct"], "{:.2f}", "≤ 1.00", ("<=", 1.00))
    ratio("warm blob MB/s ÷ `cat`", lambda r: r["blob.mirror"] / r["blob.cat"], "{:.2f}", "≥ 0.5", (">=", 0.5))
    # The in-process benchmark (run.sh --inprocess)
    ratio("in process, warm manifest lookups/s: 2 tasks ÷ 1 task", lambda r: r["inprocess.ratio.2to1"],
          "{:.2f}", "≥ 1.8", (">=", 1.8))
    ratio("in process: steps where ops/s fell by over 5 % as tasks were added (1→2→8→32)",
          lambda r: r["inprocess.falls"], "{:.0f}", "0", ("<=", 0))
    lines = ["**Ratios** (registry-mirror to the others and to its targets; within each run, median of the runs):", "",
             "| ratio | value | target | met? |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def num(v):
    """Exact for counts (bytes, requests), 4 decimals for the rest."""
    return f"{v:.0f}" if v == int(v) else f"{v:.4f}".rstrip("0").rstrip(".")


def raw(runs):
    keys = sorted({k for r in runs for k in r})
    out = ["<details><summary>Every run's raw records (seconds, bytes, MB/s, req/s, MiB)</summary>", "",
           "| record | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |",
           "|---|" + "---|" * len(runs)]
    for k in keys:
        out.append(f"| {k} | " + " | ".join(num(r[k]) if k in r else "" for r in runs) + " |")
    out += ["", "</details>"]
    return "\n".join(out)


def section(runs, img, a):
    m = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cores = int(m["nproc"]) if m["nproc"].isdigit() else os.cpu_count()
    # Other work: the system's non-idle CPU time during the run, less this benchmark's own
    # (its process tree). The load average after a run counts the run itself, so it cannot say.
    other = steal = None
    try:
        b, e = [int(x) for x in a.cpu_before.split()], [int(x) for x in a.cpu_after.split()]
        hz = os.sysconf("SC_CLK_TCK")
        other = max(0, (e[0] - b[0]) - (e[2] - b[2])) / hz
        steal = (e[1] - b[1]) / hz
    except (ValueError, IndexError):
        pass
    load_first = float(a.load_before.split()[0]) if re.match(r"[\d.]+", a.load_before) else 0.0
    other_cores = other / a.elapsed if other is not None and a.elapsed else 0.0
    # The measured CPU of other processes decides; the load average before the run only when
    # that is unknown (a load left by a build that just ended is not competition).
    busy = other_cores > 0.2 if other is not None else load_first > 0.5 * cores
    elapsed = f"{int(a.elapsed) // 60} min {int(a.elapsed) % 60} s" if a.elapsed else "?"
    head = [
        f"Date: {now}. Command: `{a.command}` ({a.runs} run(s); it took {elapsed} in all, "
        "the build check included).",
        "",
        f"Machine: {m['nproc']} cores (`nproc`), {m['memory']}, {m['cpu']}, {m['kernel']}, Debian {m['debian']}, "
        f"Swift {m['swift']}, distribution {m['distribution']} (Debian's) and v3.1.1, nginx {m['nginx']}; {m['tools']}.",
        "",
        f"Load average (1, 5, 15 min): {a.load_before} before the run, {a.load_after} after it "
        "(which counts the run itself)."
        + (f" Other processes used {other:.0f} CPU-seconds during the run, {other_cores:.2f} cores on "
           f"average; the hypervisor reported {steal:.0f} s of steal time." if other is not None else ""),
    ]
    if busy:
        head += ["", "**This run shared the machine with other work** (other processes' CPU above 0.2 cores on "
                 "average, or, where that is unknown, a load average above half the cores before it). Absolute times, throughputs and "
                 "time ratios are noisier than on a quiet machine; byte counts, request counts and RSS are not "
                 "affected."]
    return "\n".join(head + ["", table(runs, img, a), "", ratios(runs, img, a), "", raw(runs)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results"); p.add_argument("images_env")
    p.add_argument("--doc"); p.add_argument("--command", default="bash bench/run.sh")
    p.add_argument("--load-before", default="?"); p.add_argument("--load-after", default="?")
    p.add_argument("--elapsed", type=int, default=0); p.add_argument("--runs", default="?")
    p.add_argument("--hf-runs", default="3"); p.add_argument("--wrk-seconds", default="8")
    p.add_argument("--wrk-cpus", default="?"); p.add_argument("--wrk-load", default="-t2 -c32")
    p.add_argument("--blob-readers", default="16")
    p.add_argument("--cpu-before", default=""); p.add_argument("--cpu-after", default="")
    a = p.parse_args()
    text = section(load(a.results), env_file(a.images_env), a)
    print(text)
    if a.doc:
        doc = open(a.doc).read()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{a.doc} has no latest-run markers; not written")
        before, rest = doc.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        with open(a.doc, "w") as f:
            f.write(before + BEGIN + "\n" + text + "\n" + END + after)
        print(f"\nwritten to {a.doc}", file=sys.stderr)


main()
