#!/usr/bin/env bash
# The benchmark, in one command: registry-mirror beside distribution's pull-through mode
# (proxy.remoteurl) in two releases, v3.1.1 (../shared/anchors) and Debian's 2.8.2
# (docker-registry), against one real docker-registry upstream on loopback, with nginx
# serving the same bytes as static files as the limit for the warm measures.
#
#   bash bench/run.sh            full run: 5 runs, big image of 1+32+256 MiB layers, about
#                                15 minutes on 2 cores (plus the release build on a fresh
#                                clone); prints one table and writes it into
#                                docs/benchmarks.md (the "Latest run" section)
#   bash bench/run.sh --quick    1 run, big image of 1+4+16 MiB, short wrk; prints only
#   options: --runs N   --write-doc / --no-doc   --no-build (use the binaries as built)
#            --keep (leave the scratch directory)
#            --inprocess (also bench/inprocess.sh each run: the manifest lookup without a socket)
#   environment: REGISTRY_V3 (a v3.1.1 binary to use), REGISTRY_MIRROR_ANCHORS (where
#            registry-v3.1.1.xz is; default ../shared/anchors), BENCH_WRK_CPUS (the CPUs wrk
#            is pinned to; default the last one), BENCH_WRK_LOAD (wrk's threads and
#            connections; default -t2 -c32)
#
# What it does (details and what each figure means: docs/benchmarks.md):
#  1. installs what it needs (scripts/install-deps.sh --bench) and builds the release binary;
#  2. writes deterministic synthetic images (bench/make-layout.py set): a 3-layer small image,
#     a "big" image of 1, 32 and 256 MiB random layers, a 3-platform index, 50 small repos;
#  3. pushes them with skopeo to a docker-registry, and starts three more docker-registry
#     processes on the same storage: one upstream for each contender (the mirror, v3.1.1 and
#     2.8.2), so each access log counts exactly one contender's upstream traffic; starts nginx
#     on the big image's manifest and largest layer;
#  4. each run starts the three contenders on empty caches and measures them the same way, in
#     an order that rotates from run to run: cold and warm pulls (skopeo; warm ones timed by
#     hyperfine beside direct pulls), a warm blob with curl beside cat and nginx, 16 concurrent
#     curls of it, warm manifests by digest with wrk pinned to one core (requests/s and the
#     server's CPU time per request; the mirror also at its default log level), 50
#     repositories 8 at a time, then on fresh empty caches 8 concurrent cold pulls of the big
#     image (wall time, bytes, peak RSS);
#  5. bench/report.py turns the per-run records into one table: medians, the spread of runs,
#     ratios taken within each run, targets and whether each is met, and the ratios at the end.
# Helpers: bench/lib.sh (servers and measurements), bench/make-layout.py (images),
# bench/sendfile-server.py (the client's ceiling for the blob test), bench/report.py (table),
# bench/inprocess.sh (the in-process manifest benchmark).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

runs=5 quick=0 write_doc="" build=1 keep=0 inprocess=0
command_line="bash bench/run.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1; runs=1 ;;
    --runs) runs=$2; shift ;;
    --write-doc) write_doc=1 ;;
    --no-doc) write_doc=0 ;;
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --inprocess) inprocess=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$write_doc" ] || { [ $quick = 1 ] && write_doc=0 || write_doc=1; }
if [ $quick = 1 ]; then HF_RUNS=2 WRK_SECONDS=3 BLOB_ROUNDS=2; else HF_RUNS=3 WRK_SECONDS=8 BLOB_ROUNDS=3; fi
BLOB_READERS=16  # the aggregate warm-blob measure
WRK_CPUS=${BENCH_WRK_CPUS:-$(( $(nproc) - 1 ))} WRK_LOAD=${BENCH_WRK_LOAD:--t2 -c32}

source "$here/bench/lib.sh"
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_before=$(cpu_ticks)

bash scripts/install-deps.sh --bench
bin="$here/.build/release/registry-mirror"
if [ $build = 1 ]; then
  say "building the release binary"
  swift build -c release --product registry-mirror >&2
  [ $inprocess = 0 ] || swift build -c release --product manifest-benchmark >&2
fi
[ -x "$bin" ] || die "no $bin (build it, or drop --no-build)"
v3=$(registry_v3)
"$v3" --version | grep -q 'v3.1.1' || die "$v3 is not distribution v3.1.1"
command -v nginx > /dev/null || die "no nginx (scripts/install-deps.sh --bench installs nginx-light)"

work=$(mktemp -d /tmp/bench.XXXXXX)
out=$(mktemp -d /dev/shm/bench-out.XXXXXX 2>/dev/null || mktemp -d /tmp/bench-out.XXXXXX)
results="$work/results"; : > "$results"
cleanup_servers() {
  for f in "$work"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
  wait 2>/dev/null || true  # reap them, so their CPU time counts as ours
}
cleanup() {
  cleanup_servers
  rm -rf "$out"
  if [ $keep = 1 ]; then echo "scratch kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
run=0
record() { echo "$run $1 $2" >> "$results"; }

say "writing the images"
python3 bench/make-layout.py set "$work/images" $([ $quick = 1 ] && echo --quick)
source "$work/images/images.env"

UP_DIRECT=$(free_port); UP_MIRROR=$(free_port); UP_V3=$(free_port); UP_PROXY=$(free_port)
MIRROR=$(free_port); V3=$(free_port); PROXY=$(free_port); NOSENDFILE=$(free_port); NGINX=$(free_port)
contenders=(mirror v3 proxy)
start_registry up-direct "$UP_DIRECT" "$work/upstream" ""
say "pushing them to the upstream"
push() { skopeo copy -q --all --dest-tls-verify=false "oci:$work/images/$1:v1" "docker://127.0.0.1:$UP_DIRECT/bench/$1:v1"; }
push big; push small; push multi
repos=()
for n in $(seq -w 1 "$REPOS_COUNT"); do repos+=("bench/repo-$n:v1"); done
printf '%s\n' $(seq -w 1 "$REPOS_COUNT") | xargs -P 4 -I{} skopeo copy -q --dest-tls-verify=false \
  "oci:$work/images/repo-{}:v1" "docker://127.0.0.1:$UP_DIRECT/bench/repo-{}:v1"
start_registry up-mirror "$UP_MIRROR" "$work/upstream" ""
start_registry up-v3 "$UP_V3" "$work/upstream" ""
start_registry up-proxy "$UP_PROXY" "$work/upstream" ""

# References for the blob test: the mirror's buffered path (--no-sendfile) on its own copy of
# the big image, a bare sendfile server with no HTTP stack (what curl can drain at most), cat.
blob_file="$work/upstream/docker/registry/v2/blobs/sha256/${BIG_LAYER:7:2}/${BIG_LAYER:7}/data"
"$bin" import "$work/images/big" --as bench/big:v1 --data-dir "$work/nosendfile-data" --log-level error >/dev/null
"$bin" serve --offline --no-sendfile --listen "127.0.0.1:$NOSENDFILE" --data-dir "$work/nosendfile-data" \
  --log-level error > "$work/nosendfile.out" 2>&1 &
echo $! > "$work/nosendfile.pid"
wait_http "$NOSENDFILE"
python3 bench/sendfile-server.py "$blob_file" > "$work/bare.out" 2>&1 &
echo $! > "$work/bare.pid"
for _ in $(seq 50); do [ -s "$work/bare.out" ] && break; sleep 0.1; done
BARE=$(head -1 "$work/bare.out")

# nginx: the big image's manifest (the upstream's bytes, checked against the digest, with the
# Content-Type the upstream gives) and its largest layer (a hard link to the upstream's file).
manifest_path="/v2/bench/big/manifests/$BIG_MANIFEST"
mkdir -p "$work/nginx/root/v2/bench/big/manifests" "$work/nginx/root/v2/bench/big/blobs"
manifest_type=$(curl -fsS -H "$ACCEPT" -o "$work/nginx/root$manifest_path" -w '%{content_type}' "http://127.0.0.1:$UP_DIRECT$manifest_path")
[ "sha256:$(sha256sum < "$work/nginx/root$manifest_path" | cut -d' ' -f1)" = "$BIG_MANIFEST" ] || die "the manifest for nginx does not match its digest"
ln "$blob_file" "$work/nginx/root/v2/bench/big/blobs/$BIG_LAYER" 2>/dev/null || cp "$blob_file" "$work/nginx/root/v2/bench/big/blobs/$BIG_LAYER"
start_nginx "$NGINX" "$work/nginx" "$manifest_type"

say "image sizes: big $((BIG_SIZE >> 20)) MiB (layers $BIG_LAYERS_MIB MiB), small $((SMALL_SIZE >> 10)) KiB," \
  "one platform of the index $((MULTI_SIZE >> 10)) KiB, $REPOS_COUNT repos $((REPOS_SIZE >> 20)) MiB; $runs run(s)"

for run in $(seq "$runs"); do
  shift_by=$(( (run - 1) % ${#contenders[@]} ))
  order=("${contenders[@]:$shift_by}" "${contenders[@]:0:$shift_by}")
  say "run $run of $runs (order: ${order[*]})"
  for k in "${order[@]}"; do start_contender "$k"; done

  say "  big image: cold, then warm beside direct pulls"
  cold_pulls big bench/big:v1 "${order[@]}"
  warm_pulls big bench/big:v1 "${order[@]}"

  say "  warm blob: curl beside nginx and cat, then $BLOB_READERS concurrent curls"
  cat "$blob_file" > /dev/null
  for _ in $(seq "$BLOB_ROUNDS"); do
    for k in "${order[@]}" nginx; do blob_mbps "$(port_of "$k")" bench/big "$BIG_LAYER" >> "$work/blob.$k"; done
    blob_mbps "$NOSENDFILE" bench/big "$BIG_LAYER" >> "$work/blob.nosendfile"
    blob_mbps "$BARE" bench/big "$BIG_LAYER" >> "$work/blob.bare"
    cat_mbps "$blob_file" >> "$work/blob.cat"
    for k in "${order[@]}" nginx; do
      blob_aggregate_mbps "$(port_of "$k")" bench/big "$BIG_LAYER" "$BLOB_READERS" >> "$work/blob16.$k"
    done
  done
  for k in "${contenders[@]}" nginx nosendfile bare cat; do record "blob.$k" "$(median_of < "$work/blob.$k")"; rm -f "$work/blob.$k"; done
  for k in "${contenders[@]}" nginx; do record "blob16.$k" "$(median_of < "$work/blob16.$k")"; rm -f "$work/blob16.$k"; done

  say "  warm manifest by digest (wrk $WRK_LOAD pinned to CPU $WRK_CPUS, ${WRK_SECONDS}s each; server CPU per request)"
  for k in "${order[@]}" nginx; do
    r=$(curl -s -o /dev/null -w '%{http_code} %{content_type}' -H "$ACCEPT" "http://127.0.0.1:$(port_of "$k")$manifest_path")
    [ "${r%% *}" = 200 ] || die "$k answers ${r%% *} for $manifest_path"
    [ "${r#* }" = "$manifest_type" ] || die "$k answers $manifest_path with Content-Type ${r#* }, not $manifest_type"
    [ "$k" = nginx ] || m=$(mark "$k")
    manifest_measure "$k" "$manifest_path" "$k"
    [ "$k" = nginx ] || record "manifest.reqs.$k" "$(reqs_since "$k" "$m")"
  done
  # The mirror again at its default log level (info: one line per request, to a file), then
  # back at error for the rest of the run. Its cache stays; one GET loads the manifest again.
  stop mirror; start_mirror default
  curl -fsS -o /dev/null -H "$ACCEPT" "http://127.0.0.1:$MIRROR$manifest_path" || die "the mirror at log level info does not answer"
  manifest_measure mirror "$manifest_path" mirror_info
  stop mirror; start_mirror error

  say "  small image and one platform of the index: cold, then warm"
  cold_pulls small bench/small:v1 "${order[@]}"
  warm_pulls small bench/small:v1 "${order[@]}"
  cold_pulls multi bench/multi:v1 "${order[@]}"
  warm_pulls multi bench/multi:v1 "${order[@]}"

  say "  $REPOS_COUNT repositories, cold, 8 at a time"
  record repos.direct "$(pull_many "$UP_DIRECT" 8 "${repos[@]}")"
  for k in "${order[@]}"; do
    m=$(mark "$k")
    record "repos.cold.$k" "$(pull_many "$(port_of "$k")" 8 "${repos[@]}")"
    settle "$k"
    record "repos.cold.bytes.$k" "$(bytes_since "$k" "$m")"
  done

  say "  8 concurrent cold pulls of the big image, each contender on a fresh empty cache"
  for k in "${order[@]}"; do stop "$k"; done
  for k in "${order[@]}"; do start_contender "$k"; done
  eight=(bench/big:v1 bench/big:v1 bench/big:v1 bench/big:v1 bench/big:v1 bench/big:v1 bench/big:v1 bench/big:v1)
  record big8.direct "$(pull_many "$UP_DIRECT" 8 "${eight[@]}")"
  for k in "${order[@]}"; do
    record "idle.rss.$k" "$(peak_rss_mib "$k")"
    m=$(mark "$k")
    record "big8.cold.$k" "$(pull_many "$(port_of "$k")" 8 "${eight[@]}")"
    settle "$k"
    record "big8.bytes.$k" "$(bytes_since "$k" "$m")"
    record "big8.rss.$k" "$(peak_rss_mib "$k")"
  done
  for k in "${order[@]}"; do stop "$k"; done

  if [ $inprocess = 1 ]; then
    say "  the manifest lookup in process (bench/inprocess.sh)"
    bash bench/inprocess.sh --no-build --rounds 1 --seconds "$([ $quick = 1 ] && echo 1 || echo 2)" \
      --records "$work/inprocess.records" >&2
    while read -r key value; do record "$key" "$value"; done < "$work/inprocess.records"
  fi
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cleanup_servers
cpu_after=$(cpu_ticks)
elapsed=$(( $(date +%s) - started ))
say "done in $((elapsed / 60)) min $((elapsed % 60)) s"
doc_args=(); [ "$write_doc" = 1 ] && doc_args=(--doc "$here/docs/benchmarks.md")
python3 bench/report.py "$results" "$work/images/images.env" --command "$command_line" \
  --load-before "$load_before" --load-after "$load_after" --elapsed "$elapsed" --runs "$runs" \
  --cpu-before "$cpu_before" --cpu-after "$cpu_after" \
  --hf-runs "$HF_RUNS" --wrk-seconds "$WRK_SECONDS" --wrk-cpus "$WRK_CPUS" --wrk-load="$WRK_LOAD" --blob-readers "$BLOB_READERS" "${doc_args[@]}"
