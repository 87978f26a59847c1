# Helpers for bench/run.sh: servers, pulls, and the measurements. Sourced, not run.
# Expects: $work (scratch directory on disk), $out (client output, on tmpfs if possible),
# $bin (the registry-mirror binary), $here (the repository), and the ports below.
#
# Contenders, each with a port and an upstream of its own:
#   direct  a plain docker-registry ($UP_DIRECT); the images were pushed to it
#   mirror  registry-mirror           ($MIRROR) → upstream $UP_MIRROR
#   proxy   docker-registry in pull-through mode (proxy.remoteurl) ($PROXY) → $UP_PROXY
# The three upstreams are docker-registry processes serving one storage directory, so each
# access log ($work/up-<contender>.log) holds one contender's upstream traffic and nothing else.

# The manifest types a modern puller accepts (for curl and wrk).
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { awk "BEGIN {printf \"%.6f\n\", $1}"; }
say() { echo "[$(date +%T)] $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# For telling whether other work shared the machine: "ALL STEAL OURS" in clock ticks, where ALL
# is the system's non-idle CPU time (/proc/stat), STEAL the hypervisor's steal time, and OURS
# this shell's CPU time plus that of its children once reaped.
cpu_ticks() {
  local _ u n s i w q sq st
  read -r _ u n s i w q sq st _ < /proc/stat
  echo "$((u + n + s + q + sq)) $st $(awk '{print $14 + $15 + $16 + $17}' "/proc/$$/stat")"
}

wait_http() { # $1 port
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null 2>&1 && return 0; sleep 0.05; done
  die "nothing answers on port $1"
}

# A docker-registry. $1 name, $2 port, $3 storage directory, $4 extra YAML.
# Its access log goes to $work/$1.log, its pid to $work/$1.pid.
start_registry() {
  mkdir -p "$work/$1.d"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:%s}\n%s\n' \
    "$3" "$2" "$4" > "$work/$1.d/config.yml"
  docker-registry serve "$work/$1.d/config.yml" > "$work/$1.log" 2> "$work/$1.err" &
  echo $! > "$work/$1.pid"
  wait_http "$2"
}
stop() { # $1 name
  [ -f "$work/$1.pid" ] || return 0
  local pid; pid=$(cat "$work/$1.pid"); rm -f "$work/$1.pid"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

port_of() { case $1 in direct) echo "$UP_DIRECT" ;; mirror) echo "$MIRROR" ;; proxy) echo "$PROXY" ;; esac; }

# Starts a contender on an empty cache.
start_contender() { # $1 mirror|proxy
  case $1 in
    mirror)
      rm -rf "$work/mirror-data"
      "$bin" serve --listen "127.0.0.1:$MIRROR" --data-dir "$work/mirror-data" \
        --upstream "http://127.0.0.1:$UP_MIRROR" --log-level error > "$work/mirror.out" 2>&1 &
      echo $! > "$work/mirror.pid"
      wait_http "$MIRROR" ;;
    proxy)
      rm -rf "$work/proxy-data"
      start_registry proxy "$PROXY" "$work/proxy-data" "proxy: {remoteurl: http://127.0.0.1:$UP_PROXY}" ;;
  esac
}

# Upstream traffic, from the contender's upstream access log (combined log format).
mark() { wc -l < "$work/up-$1.log"; }
bytes_since() { # $1 contender, $2 mark: bytes of 2xx GET responses since the mark
  tail -n +"$(( $2 + 1 ))" "$work/up-$1.log" | awk '$6 == "\"GET" && $9 ~ /^2/ {s += $10} END {printf "%d\n", s}'
}
reqs_since() { echo $(( $(mark "$1") - $2 )); }
# A log line is written when a response completes; wait until none has come for 0.5 s, so a
# contender's late upstream fetches (after its client finished) are counted where they belong.
settle() { # $1 contender
  local n m; n=$(mark "$1")
  for _ in $(seq 40); do sleep 0.5; m=$(mark "$1"); [ "$m" = "$n" ] && return 0; n=$m; done
}

peak_rss_mib() { awk '/VmHWM/ {printf "%.1f\n", $2/1024}' "/proc/$(cat "$work/$1.pid")/status"; }

# One skopeo pull into an OCI layout on $out; prints wall seconds. skopeo picks this machine's
# platform from an index. $1 port, $2 repo:tag.
pull() {
  local t0 t1 dest="$out/pull"; rm -rf "$dest"; t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/$2" "oci:$dest:x" >/dev/null \
    || die "pull of $2 from port $1 failed"
  t1=$(now); rm -rf "$dest"; calc "$t1 - $t0"
}
# Pulls every listed repo:tag, $2 at a time; prints wall seconds. $1 port, $2 parallelism.
pull_many() {
  local port=$1 par=$2 t0 t1 i=0; shift 2
  rm -rf "$out"/many-*; t0=$(now)
  for ref in "$@"; do i=$((i + 1)); echo "$ref $out/many-$i"; done \
    | xargs -P "$par" -n 2 sh -c 'skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$0/$1" "oci:$2:x" >/dev/null' "$port" \
    || die "a pull from port $port failed"
  t1=$(now); rm -rf "$out"/many-*; calc "$t1 - $t0"
}

# Warm pulls timed by hyperfine: direct and each contender, $HF_RUNS runs after one warm-up
# each. Records "<label>.warm.<k>" (median seconds) and "<label>.warm.reqs.<k>" (upstream
# requests per pull). $1 label, $2 repo:tag, then the contenders in this run's order.
warm_pulls() {
  local label=$1 ref=$2 k; shift 2
  local preps=() cmds=() marks=()
  for k in direct "$@"; do
    preps+=(--prepare "rm -rf $out/warm-$k")
    cmds+=("skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$(port_of "$k")/$ref oci:$out/warm-$k:x")
  done
  for k in "$@"; do marks+=("$(mark "$k")"); done
  hyperfine -N --style basic --warmup 1 --runs "$HF_RUNS" "${preps[@]}" \
    --export-json "$work/hf.json" "${cmds[@]}" >> "$work/hyperfine.log" 2>&1 \
    || die "hyperfine of $ref failed (see $work/hyperfine.log)"
  rm -rf "$out"/warm-*
  python3 -c 'import json, sys
for name, r in zip(sys.argv[2:], json.load(open(sys.argv[1]))["results"]): print(name, r["median"])' \
    "$work/hf.json" direct "$@" | while read -r k t; do record "$label.warm.$k" "$t"; done
  local i=0
  for k in "$@"; do
    record "$label.warm.reqs.$k" "$(calc "$(reqs_since "$k" "${marks[$i]}") / ($HF_RUNS + 1)")"
    i=$((i + 1))
  done
}

# Cold pull of one image by each contender in turn, each on the cache it has (the caller
# starts them empty). Records seconds, upstream bytes and upstream requests.
cold_pulls() { # $1 label, $2 repo:tag, then the contenders
  local label=$1 ref=$2 k m; shift 2
  for k in "$@"; do
    m=$(mark "$k")
    record "$label.cold.$k" "$(pull "$(port_of "$k")" "$ref")"
    settle "$k"
    record "$label.cold.bytes.$k" "$(bytes_since "$k" "$m")"
    record "$label.cold.reqs.$k" "$(reqs_since "$k" "$m")"
  done
}

# MB/s of one blob fetched with curl to /dev/null. $1 port, $2 repo, $3 digest.
blob_mbps() {
  local r; r=$(curl -fsS -o /dev/null -w '%{size_download} %{speed_download}' "http://127.0.0.1:$1/v2/$2/blobs/$3") \
    || die "blob $3 from port $1 failed"
  [ "${r% *}" = "$BIG_LAYER_SIZE" ] || die "blob $3 from port $1: ${r% *} bytes, expected $BIG_LAYER_SIZE"
  awk -v s="${r#* }" 'BEGIN {printf "%d\n", s / 1e6}'
}
cat_mbps() { # $1 file
  local t0 t1; t0=$(now); cat "$1" > /dev/null; t1=$(now)
  awk -v n="$(stat -c %s "$1")" -v t="$(calc "$t1 - $t0")" 'BEGIN {printf "%d\n", n / t / 1e6}'
}
median_of() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Requests per second for one warm URL: wrk -t2 -c32 for $WRK_SECONDS. Prints "RPS ERRORS",
# where ERRORS counts non-2xx answers and socket errors (a valid measurement has none).
wrk_rps() { # $1 port, $2 path
  local o; o=$(wrk -t2 -c32 -d"${WRK_SECONDS}s" -H "$ACCEPT" "http://127.0.0.1:$1$2" 2>&1) || die "wrk on port $1 failed"
  echo "$o" >> "$work/wrk.log"
  echo "$o" | awk '/Requests\/sec/ {r = $2}
    /Non-2xx/ {e += $NF}
    /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10}
    END {printf "%s %d\n", r, e}'
}
