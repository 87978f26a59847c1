#!/usr/bin/env bash
# The fleet benchmark (issue 12): three registry-mirror replicas on one S3 bucket and one
# PostgreSQL index, beside three independent distribution v3.1.1 proxies on one shared S3
# bucket (distribution's own s3 driver, the same moto server), against one real
# docker-registry upstream. Concurrent cold pulls spread round-robin over the three replicas.
#
#   bash bench/fleet.sh [--rounds N] [--clients "8 32"] [--rate BYTES_PER_SECOND] [--no-build] [--keep]
#
#   --rounds N    rounds (default 3); every round pulls fresh images, so every pull is cold
#   --clients L   the numbers of concurrent pulls to measure (default "8 32")
#   --rate R      the upstream link, bytes per second, 0 for plain loopback (default 100 MiB/s)
#   --layer MIB   the big layer's size in MiB (default 256; smaller only to try the script out)
#   --no-build    measure .build/release/registry-mirror as built
#   --keep        leave the scratch directory (logs, configs) in /tmp
#   environment: REGISTRY_V3, REGISTRY_MIRROR_ANCHORS (as for bench/run.sh),
#                REGISTRY_MIRROR_PG_BIN (PostgreSQL's binaries; default /usr/lib/postgresql/15/bin),
#                BENCH_LOG_LEVEL (the replicas' log level; default error)
#
# The parts, all on loopback:
#  - three docker-registry (distribution 2.8) processes on one storage directory, the images
#    pushed to the first with skopeo, one process as each contender's upstream, so each access
#    log counts one contender's traffic: direct pulls, the fleet, the v3.1.1 proxies;
#  - the upstream link: each of the three reaches its upstream through its own
#    bench/throttle.py, one rate shared by all its connections (a site's uplink to a remote
#    registry; 100 MiB/s by default, about a 1 Gbit/s line). Direct pulls share their link as
#    the fleet's replicas share theirs;
#  - one moto server (.build/venv-moto, made as scripts/test.sh makes it) with two buckets, one
#    for the fleet and one for the v3.1.1 proxies; one PostgreSQL 15 cluster (initdb in a
#    temporary directory, run as the `postgres` user when we are root) for the fleet's index;
#  - contenders, started afresh for each measure (so peak RSS belongs to it):
#      fleet  three `registry-mirror serve` (release build) with storage.backend s3,
#             index.backend postgres and the fleet.* keys, each its own peer port;
#      v3     three distribution v3.1.1 (../shared/anchors) in proxy mode, storage.s3 on the
#             shared bucket, redirect off (blobs leave from the proxy, as ours do);
#      direct the same pulls straight from the upstream, through the same kind of link.
#
# For each round and each client count, in an order that rotates, N concurrent
# `skopeo copy docker://… oci:…` of one fresh image (a 256 MiB layer and a 4 KiB one), pull i
# through replica i mod 3. Recorded: wall time from the first start to the last end, the
# upstream's 2xx GET bytes (its access log) ÷ the image's bytes (manifest, config, layers),
# upstream blob GETs, failed pulls, peak RSS (VmHWM) of every replica, and for the fleet the
# bytes its replicas streamed from peers and from S3 (/metrics). The table gives medians over
# the rounds of ratios taken within each round. Results: docs/benchmarks.md, "Fleet".
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

rounds=3 clients="8 32" rate=$((100 << 20)) layer=256 build=1 keep=0
command_line="bash bench/fleet.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --clients) clients=$2; shift ;;
    --rate) rate=$2; shift ;;
    --layer) layer=$2; shift ;;
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

source "$here/bench/lib.sh"
bash scripts/install-deps.sh --bench
bash scripts/install-deps.sh --test
if [ ! -x .build/venv-moto/bin/moto_server ]; then
  python3 -m venv .build/venv-moto
  .build/venv-moto/bin/pip install -q 'moto[server]'
fi
bin="$here/.build/release/registry-mirror"
if [ $build = 1 ]; then
  say "building the release binary"
  swift build -c release --product registry-mirror >&2
fi
[ -x "$bin" ] || die "no $bin (build it, or drop --no-build)"
v3=$(registry_v3)
"$v3" --version | grep -q 'v3.1.1' || die "$v3 is not distribution v3.1.1"
pgbin=${REGISTRY_MIRROR_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$pgbin/initdb" ] || die "no $pgbin/initdb (the postgresql package)"
log_level=${BENCH_LOG_LEVEL:-error}

work=$(mktemp -d /tmp/fleet-bench.XXXXXX)
out=$(mktemp -d /dev/shm/fleet-out.XXXXXX 2>/dev/null || mktemp -d /tmp/fleet-out.XXXXXX)
# PostgreSQL refuses to run as root: its directory belongs to `postgres` then, outside $work
# (private to root).
pgdir=$(mktemp -d /tmp/fleet-pg.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" != 0 ] || chown postgres: "$pgdir"
results="$work/results"; : > "$results"
cleanup() {
  for f in "$work"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
  as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate -w stop > /dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$out" "$pgdir"
  if [ $keep = 1 ]; then echo "scratch kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
record() { echo "$round $n $1 $2" >> "$results"; }  # round, clients, key, value

ACCESS_KEY=fleet-bench-access SECRET_KEY=fleet-bench-secret-key
FLEET_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

say "PostgreSQL 15 and moto"
PG=$(free_port)
as_pg "$pgbin/initdb" -D "$pgdir/data" -U postgres -A trust -E UTF8 --no-sync > "$work/initdb.log"
as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w start -o \
  "-p $PG -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" > /dev/null
as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$PG" -U postgres mirror
MOTO=$(free_port)
.build/venv-moto/bin/moto_server -H 127.0.0.1 -p "$MOTO" > "$work/moto.log" 2>&1 &
echo $! > "$work/moto.pid"
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$MOTO/" && break; sleep 0.1; done
s3() { # $1 method, $2 path: one signed request to moto
  curl -fsS -X "$1" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" "http://127.0.0.1:$MOTO$2" -o /dev/null
}
s3 PUT /fleet-bench; s3 PUT /v3-bench

say "the upstream and the images"
UP_DIRECT=$(free_port); UP_FLEET=$(free_port); UP_V3=$(free_port)
start_registry up-direct "$UP_DIRECT" "$work/upstream" ""
start_registry up-fleet "$UP_FLEET" "$work/upstream" ""
start_registry up-v3 "$UP_V3" "$work/upstream" ""
image_bytes=0
for round in $(seq "$rounds"); do
  for n in $clients; do
    layout="$work/images/r$round-n$n"
    # --gzip (level 0): skopeo pushes the layers as they are (it would compress plain tar ones).
    python3 bench/make-layout.py --gzip --seed $((round * 1000 + n)) "$layout" v1 "$layer" 4K > /dev/null
    skopeo copy -q --dest-tls-verify=false "oci:$layout:v1" "docker://127.0.0.1:$UP_DIRECT/bench/fleet-r$round-n$n:v1"
    rm -rf "$layout"
    # What one pull fetches, as the upstream holds it: manifest, config and layers.
    image_bytes=$(curl -fsS -H "$ACCEPT" "http://127.0.0.1:$UP_DIRECT/v2/bench/fleet-r$round-n$n/manifests/v1" | python3 -c '
import json, sys
raw = sys.stdin.buffer.read(); m = json.loads(raw)
print(len(raw) + m["config"]["size"] + sum(l["size"] for l in m["layers"]))')
  done
done

# The links: one throttle.py per contender (or none at --rate 0).
link() { # $1 name, $2 upstream port; prints the port to use
  if [ "$rate" = 0 ]; then echo "$2"; return 0; fi
  local port; port=$(free_port)
  python3 bench/throttle.py "$port" "$2" "$rate" 0 "$work/link-$1.log" > "$work/link-$1.err" 2>&1 &
  echo $! > "$work/link-$1.pid"
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.05; done
  echo "$port"
}
LINK_DIRECT=$(link direct "$UP_DIRECT"); LINK_FLEET=$(link fleet "$UP_FLEET"); LINK_V3=$(link v3 "$UP_V3")

FLEET_PORTS=() PEER_PORTS=() V3_PORTS=()
for i in 0 1 2; do FLEET_PORTS+=("$(free_port)"); PEER_PORTS+=("$(free_port)"); V3_PORTS+=("$(free_port)"); done

start_fleet() {
  local i
  for i in 0 1 2; do
    rm -rf "$work/fleet-$i-data"
    (
      export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
        REGISTRY_MIRROR_STORAGE_BACKEND=s3 REGISTRY_MIRROR_STORAGE_S3_ENDPOINT="http://127.0.0.1:$MOTO" \
        REGISTRY_MIRROR_STORAGE_S3_REGION=us-east-1 REGISTRY_MIRROR_STORAGE_S3_BUCKET=fleet-bench \
        REGISTRY_MIRROR_STORAGE_S3_PREFIX=fleet REGISTRY_MIRROR_STORAGE_S3_PATH_STYLE=true \
        REGISTRY_MIRROR_INDEX_BACKEND=postgres \
        REGISTRY_MIRROR_INDEX_POSTGRES_DSN="postgres://postgres@127.0.0.1:$PG/mirror?sslmode=disable" \
        REGISTRY_MIRROR_FLEET_SECRET="$FLEET_SECRET" REGISTRY_MIRROR_FLEET_REPLICA_ID="replica-$i" \
        REGISTRY_MIRROR_FLEET_LISTEN="127.0.0.1:${PEER_PORTS[$i]}" \
        REGISTRY_MIRROR_FLEET_ADVERTISE="http://127.0.0.1:${PEER_PORTS[$i]}"
      exec "$bin" serve --listen "127.0.0.1:${FLEET_PORTS[$i]}" --data-dir "$work/fleet-$i-data" \
        --upstream "http://127.0.0.1:$LINK_FLEET" --log-level "$log_level"
    ) >> "$work/fleet-$i.out" 2>&1 &
    echo $! > "$work/fleet-$i.pid"
  done
  for i in 0 1 2; do wait_http "${FLEET_PORTS[$i]}"; done
}

start_v3() {
  local i
  for i in 0 1 2; do
    mkdir -p "$work/v3-$i.d"
    cat > "$work/v3-$i.d/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage:
  s3: {accesskey: $ACCESS_KEY, secretkey: $SECRET_KEY, region: us-east-1, regionendpoint: "http://127.0.0.1:$MOTO",
       forcepathstyle: true, secure: false, bucket: v3-bench, rootdirectory: /v3}
  redirect: {disable: true}
  delete: {enabled: true}
http: {addr: "127.0.0.1:${V3_PORTS[$i]}", secret: fleet-bench-v3-http-secret}
proxy: {remoteurl: "http://127.0.0.1:$LINK_V3"}
YAML
    OTEL_TRACES_EXPORTER=none "$v3" serve "$work/v3-$i.d/config.yml" >> "$work/v3-$i.log" 2>> "$work/v3-$i.err" &
    echo $! > "$work/v3-$i.pid"
  done
  for i in 0 1 2; do wait_http "${V3_PORTS[$i]}"; done
}

# $n concurrent pulls of $1 (repo:tag), pull i through port i mod (number of ports); prints
# wall seconds. Failed pulls are counted in $work/failed (and their stderr kept), not fatal:
# a failure is a finding.
pull_spread() {
  local ref=$1 t0 t1 i; shift
  local ports=("$@")
  rm -rf "$out"/p-*; : > "$work/failed"; t0=$(now)
  for i in $(seq "$n"); do echo "${ports[$(( (i - 1) % ${#ports[@]} ))]} $out/p-$i"; done \
    | xargs -P "$n" -n 2 sh -c 'skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$0/'"$ref"'" "oci:$1:x" > /dev/null 2> "$1.err" || { echo "port $0: $(tail -c 400 "$1.err")" >> "'"$work"'/failed"; }' \
    || true
  t1=$(now)
  cat "$work/failed" >> "$work/failed.log"
  rm -rf "$out"/p-*
  calc "$t1 - $t0"
}

metric() { # $1 port, $2 metric name: its value summed over the series of that name
  curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'
}

# The upstream's traffic for one repository (each measure pulls its own), from the contender's
# upstream access log: bytes of 2xx GETs, and 2xx blob GETs. (%.0f: mawk's %d stops at 2^31.)
upstream_bytes() { # $1 contender, $2 repository
  awk -v r="/v2/$2/" '$6 == "\"GET" && index($7, r) == 1 && $9 ~ /^2/ {s += $10} END {printf "%.0f\n", s}' "$work/up-$1.log"
}
upstream_blob_gets() { # $1 contender, $2 repository
  awk -v r="/v2/$2/blobs/" '$6 == "\"GET" && index($7, r) == 1 && $9 ~ /^2/' "$work/up-$1.log" | wc -l
}

measure() { # $1 contender, $2 repo:tag
  local k=$1 ref=$2 t i
  case $k in
    fleet) start_fleet ;;
    v3) start_v3 ;;
  esac
  case $k in
    direct) t=$(pull_spread "$ref" "$LINK_DIRECT") ;;
    fleet) t=$(pull_spread "$ref" "${FLEET_PORTS[@]}") ;;
    v3) t=$(pull_spread "$ref" "${V3_PORTS[@]}") ;;
  esac
  record "$k.wall" "$t"
  record "$k.failed" "$(wc -l < "$work/failed")"
  settle "$k"
  record "$k.bytes" "$(upstream_bytes "$k" "${ref%:*}")"
  record "$k.blob_gets" "$(upstream_blob_gets "$k" "${ref%:*}")"
  if [ "$k" != direct ]; then
    for i in 0 1 2; do record "$k.rss.$i" "$(peak_rss_mib "$k-$i")"; done
  fi
  if [ "$k" = fleet ]; then
    local peers=0 froms3=0
    for i in 0 1 2; do
      peers=$((peers + $(metric "${FLEET_PORTS[$i]}" registry_mirror_fleet_bytes_from_peers)))
      froms3=$((froms3 + $(metric "${FLEET_PORTS[$i]}" registry_mirror_fleet_bytes_from_store)))
    done
    record fleet.from_peers "$peers"; record fleet.from_s3 "$froms3"
  fi
  [ "$k" = direct ] || for i in 0 1 2; do stop "$k-$i"; done
  say "    $k: $t s, upstream $(( $(upstream_bytes "$k" "${ref%:*}") >> 20 )) MiB, $(wc -l < "$work/failed") failed"
}

started=$(date +%s)
say "image $((image_bytes >> 20)) MiB; $rounds round(s) of ${clients// / and } concurrent pulls; link $([ "$rate" = 0 ] && echo unpaced || echo "$((rate >> 20)) MiB/s")"
contenders=(direct fleet v3)
for round in $(seq "$rounds"); do
  for n in $clients; do
    shift_by=$(( (round - 1) % 3 ))
    order=("${contenders[@]:$shift_by}" "${contenders[@]:0:$shift_by}")
    say "round $round, $n clients (order: ${order[*]})"
    for k in "${order[@]}"; do measure "$k" "bench/fleet-r$round-n$n:v1"; done
  done
done
elapsed=$(( $(date +%s) - started ))

python3 - "$results" "$image_bytes" "$command_line" "$elapsed" "$rate" <<'PY'
import sys, statistics
from collections import defaultdict
path, image, command, elapsed, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rec = defaultdict(dict)  # (n, key) -> {round: value}
for line in open(path):
    r, n, k, v = line.split()
    rec[(int(n), k)][int(r)] = float(v)
def med(xs): return statistics.median(xs) if xs else float("nan")
def span(xs, f): return f"{f(med(xs))} ({f(min(xs))}–{f(max(xs))})" if len(xs) > 1 else f(med(xs))
print(f"\n`{command}`: {elapsed} s; image {image} bytes ({image / 2**20:.1f} MiB); link "
      + ("unpaced (loopback)" if rate == 0 else f"{rate / 2**20:.0f} MiB/s per contender") + "\n")
print("| clients | contender | wall s, median (range) | wall ÷ direct, within each round | upstream bytes ÷ image | upstream blob GETs | peak RSS per replica, MiB (max of rounds) | failed pulls |")
print("|---|---|---|---|---|---|---|---|")
for n in sorted({n for n, _ in rec}):
    direct = rec[(n, "direct.wall")]
    for k in ("direct", "fleet", "v3"):
        wall = rec[(n, f"{k}.wall")]
        if not wall: continue
        ratios = [wall[r] / direct[r] for r in wall if r in direct]
        by = [rec[(n, f"{k}.bytes")][r] / image for r in wall]
        gets = sorted(int(v) for v in rec[(n, f"{k}.blob_gets")].values())
        rss = " / ".join(f"{max(rec[(n, f'{k}.rss.{i}')].values()):.0f}" for i in range(3)) if rec.get((n, f"{k}.rss.0")) else "–"
        failed = int(sum(rec[(n, f"{k}.failed")].values()))
        print(f"| {n} | {k} | {span(list(wall.values()), lambda x: f'{x:.1f}')} | "
              + ("1 (reference)" if k == "direct" else span(ratios, lambda x: f"{x:.2f}")) + " | "
              + span(by, lambda x: f"{x:.4f}") + " | " + ", ".join(map(str, gets)) + f" | {rss} | {failed} |")
print()
for n in sorted({n for n, _ in rec}):
    peers = rec.get((n, "fleet.from_peers"), {})
    s3 = rec.get((n, "fleet.from_s3"), {})
    if peers:
        print(f"fleet, {n} clients: replicas streamed from peers {', '.join(f'{v / 2**20:.0f}' for v in peers.values())} MiB, "
              f"from S3 {', '.join(f'{v / 2**20:.0f}' for v in s3.values())} MiB (per round)")
PY
if [ -s "$work/failed.log" ]; then say "failed pulls:"; cat "$work/failed.log" >&2; fi
