#!/usr/bin/env bash
# Lazy pulling: how long the last 1 MiB of a cold blob takes, the upstream behind a paced link.
#
#   bash bench/lazy-range.sh [--runs N] [--size MiB] [--rate MiB/s] [--bin PATH] [--keep]
#
# Defaults: 3 runs, a 256 MiB blob of random bytes, 32 MiB/s, .build/release/registry-mirror.
# One docker-registry holds the blob. Each contender gets an empty cache and a paced link of
# its own to that registry (bench/throttle.py, which also logs what it was asked):
#   direct   the registry itself, through the link
#   mirror   registry-mirror
#   v3.1.1   distribution v3.1.1 in proxy mode (../shared/anchors/registry-v3.1.1.xz)
#   2.8.2    Debian's docker-registry in proxy mode
# Each is asked `Range: bytes=-1048576` of the cold blob with curl (time, status, bytes), then
# the whole blob (the download the cache keeps), and the link's log says what reached the
# upstream. Contenders go in a different order each run. Prints one line per run and contender.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=3 size_mib=256 rate_mib=32 keep=0 bin="$here/.build/release/registry-mirror"
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift ;;
    --size) size_mib=$2; shift ;;
    --rate) rate_mib=$2; shift ;;
    --bin) bin=$2; shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
source "$here/bench/lib.sh"
[ -x "$bin" ] || die "no $bin (swift build -c release --product registry-mirror, or --bin PATH)"
work=$(mktemp -d /tmp/bench-lazy.XXXXXX)
cleanup() {
  for f in "$work"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
  wait 2>/dev/null || true
  if [ $keep = 1 ]; then echo "scratch kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

v3=$(registry_v3)

size=$((size_mib << 20)) rate=$((rate_mib << 20)) tail=$((1 << 20))
UP=$(free_port)
start_registry upstream "$UP" "$work/upstream-storage" ""
say "writing a $size_mib MiB blob and pushing it"
head -c "$size" /dev/urandom > "$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
location=$(curl -fsS -X POST -d '' -o /dev/null -w '%header{location}' "http://127.0.0.1:$UP/v2/bench/lazy/blobs/uploads/")
case $location in http*) ;; *) location="http://127.0.0.1:$UP$location" ;; esac
case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$work/blob" \
  "$location${sep}digest=$digest" -o /dev/null || die "uploading the blob failed"
expected_tail=$(tail -c "$tail" "$work/blob" | sha256sum | cut -d' ' -f1)
rm -f "$work/blob"
path="/v2/bench/lazy/blobs/$digest"

# A contender on an empty cache behind a fresh link. $1 name; prints its port.
start_one() {
  local link port; link=$(free_port); port=$(free_port)
  python3 "$here/bench/throttle.py" "$link" "$UP" "$rate" 0 "$work/$1.link.log" > /dev/null 2>&1 &
  echo $! > "$work/$1-link.pid"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$link/v2/" > /dev/null 2>&1 && break; sleep 0.05; done
  rm -rf "$work/$1-data"
  case $1 in
    direct) port=$link ;;
    mirror)
      "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/$1-data" --upstream "http://127.0.0.1:$link" \
        --log-level error > "$work/mirror.out" 2>&1 &
      echo $! > "$work/mirror.pid"
      wait_http "$port" ;;
    v3.1.1|2.8.2)
      mkdir -p "$work/$1.d"
      printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\nproxy: {remoteurl: http://127.0.0.1:%s}\n' \
        "$work/$1-data" "$port" "$link" > "$work/$1.d/config.yml"
      if [ "$1" = v3.1.1 ]; then
        OTEL_TRACES_EXPORTER=none "$v3" serve "$work/$1.d/config.yml" > "$work/$1.out" 2>&1 &
      else
        docker-registry serve "$work/$1.d/config.yml" > "$work/$1.out" 2>&1 &
      fi
      echo $! > "$work/$1.pid"
      wait_http "$port" ;;
  esac
  echo "$port"
}

printf '%-4s %-8s %9s %6s %9s %10s  %s\n' run who tail_s status bytes whole_s "upstream requests for the blob (method range)"
for run in $(seq "$runs"); do
  order=(direct mirror v3.1.1 2.8.2)
  for _ in $(seq $(( (run - 1) % 4 ))); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    port=$(start_one "$who")
    r=$(curl -sS -o "$work/tail" -H "Range: bytes=-$tail" -w '%{time_total} %{http_code} %{size_download}' "http://127.0.0.1:$port$path") \
      || die "$who: the ranged GET failed"
    read -r t status bytes <<< "$r"
    # A 206 must be exactly the tail; a 200 (the whole blob) counts as the time to the tail.
    if [ "$status" = 206 ] && [ "$(sha256sum < "$work/tail" | cut -d' ' -f1)" != "$expected_tail" ]; then die "$who: wrong tail bytes"; fi
    whole=$(curl -fsS -o "$work/whole" -w '%{time_total}' "http://127.0.0.1:$port$path") || die "$who: the whole GET failed"
    [ "sha256:$(sha256sum < "$work/whole" | cut -d' ' -f1)" = "$digest" ] || die "$who: the whole blob is wrong"
    rm -f "$work/tail" "$work/whole"
    sleep 1  # let a download the client did not wait for reach the link's log
    asked=$(awk -v p="$path" '$2 == p {printf "%s%s %s", (n++ ? ", " : ""), $1, $3}' "$work/$who.link.log")
    printf '%-4s %-8s %9.3f %6s %9s %10.3f  %s\n' "$run" "$who" "$t" "$status" "$bytes" "$whole" "$asked"
    stop "$who"; stop "$who-link"; rm -f "$work/$who.link.log"
  done
done
echo "blob $size_mib MiB, link ${rate_mib} MiB/s each contender, range bytes=-$tail; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
