# Helpers for bench/run.sh: servers, pulls, and the measurements. Sourced, not run.
# Expects: $work (scratch directory on disk), $out (client output, on tmpfs if possible),
# $bin (the registry-mirror binary), $v3 (distribution v3.1.1's: `registry_v3`), $here (the
# repository), and the ports below.
#
# Contenders, each with a port and an upstream of its own:
#   direct  a plain docker-registry ($UP_DIRECT); the images were pushed to it
#   mirror  registry-mirror           ($MIRROR) → upstream $UP_MIRROR
#   v3      distribution v3.1.1 in pull-through mode (proxy.remoteurl) ($V3) → $UP_V3
#   proxy   Debian's docker-registry, distribution 2.8.2, in pull-through mode ($PROXY) → $UP_PROXY
# and a reference that is no cache:
#   nginx   nginx-light serving the big image's manifest and largest layer as static files
#           ($NGINX): the practical limit for the warm manifest and warm blob measures
# The upstreams are docker-registry processes serving one storage directory, so each access
# log ($work/up-<contender>.log) holds one contender's upstream traffic and nothing else.

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

# A docker-registry. $1 name, $2 port, $3 storage directory, $4 extra YAML, $5 the binary
# (default: Debian's docker-registry; `registry_v3` gives v3.1.1's).
# Its access log goes to $work/$1.log, its pid to $work/$1.pid.
start_registry() {
  mkdir -p "$work/$1.d"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:%s}\n%s\n' \
    "$3" "$2" "$4" > "$work/$1.d/config.yml"
  # Without OTEL_TRACES_EXPORTER=none, v3 sends traces to localhost:4318 (2.8 ignores it).
  OTEL_TRACES_EXPORTER=none "${5:-docker-registry}" serve "$work/$1.d/config.yml" > "$work/$1.log" 2> "$work/$1.err" &
  echo $! > "$work/$1.pid"
  wait_http "$2"
}

# distribution v3.1.1, the anchor binary of ../shared/anchors (see its README), unpacked once
# into a cache directory (never into the repository) and checked against the sha256 its
# README names; prints its path. $REGISTRY_V3 names a binary to use instead,
# $REGISTRY_MIRROR_ANCHORS the anchors directory (default: ../shared/anchors beside the repository).
REGISTRY_V3_SHA256=7f71c1d604102c13dd2fa317c574b500b8585db553b3e94dc094a0ce1c59baa6
registry_v3() {
  if [ -n "${REGISTRY_V3:-}" ]; then
    [ -x "$REGISTRY_V3" ] || die "REGISTRY_V3=$REGISTRY_V3 is not an executable"
    echo "$REGISTRY_V3"; return 0
  fi
  local anchors=${REGISTRY_MIRROR_ANCHORS:-$here/../shared/anchors}
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/registry-mirror-bench
  local v3="$cache/registry-v3.1.1"
  if [ ! -x "$v3" ] || [ "$(sha256sum "$v3" | cut -d' ' -f1)" != "$REGISTRY_V3_SHA256" ]; then
    [ -f "$anchors/registry-v3.1.1.xz" ] || die "no $anchors/registry-v3.1.1.xz (set REGISTRY_MIRROR_ANCHORS or REGISTRY_V3)"
    mkdir -p "$cache"
    xz -dc "$anchors/registry-v3.1.1.xz" > "$v3.tmp" && chmod +x "$v3.tmp"
    [ "$(sha256sum "$v3.tmp" | cut -d' ' -f1)" = "$REGISTRY_V3_SHA256" ] \
      || die "registry-v3.1.1 does not have the sha256 its README names"
    mv "$v3.tmp" "$v3"
  fi
  echo "$v3"
}

# nginx serving the files under $2/root as the registry paths they stand for, with sendfile
# and no access log; its config, pid file and error log live in $2. $1 port, $3 the manifests'
# Content-Type. Its pid goes to $work/nginx.pid (the master; the workers are its children).
# The workers run as this user: the files sit in private scratch directories (when not root,
# nginx ignores the `user` line).
start_nginx() {
  local port=$1 dir=$2 type=$3
  mkdir -p "$dir/tmp"
  cat > "$dir/nginx.conf" <<NGINX
daemon off;
user $(id -un);
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000000;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  types {}
  server {
    listen 127.0.0.1:$port;
    root $dir/root;
    location = /v2/ { default_type application/json; return 200 '{}'; }
    location ~ "^/v2/.+/manifests/sha256:[0-9a-f]{64}\$" { default_type $type; }
    location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}\$" { default_type application/octet-stream; }
    location / { return 404; }
  }
}
NGINX
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" > "$dir/nginx.out" 2>&1 &
  echo $! > "$work/nginx.pid"
  wait_http "$port"
}
stop() { # $1 name
  [ -f "$work/$1.pid" ] || return 0
  local pid; pid=$(cat "$work/$1.pid"); rm -f "$work/$1.pid"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

port_of() {
  case $1 in
    direct) echo "$UP_DIRECT" ;; mirror) echo "$MIRROR" ;; v3) echo "$V3" ;; proxy) echo "$PROXY" ;;
    nginx) echo "$NGINX" ;;
  esac
}

# Starts a contender on an empty cache.
start_contender() { # $1 mirror|v3|proxy
  rm -rf "$work/$1-data"
  case $1 in
    mirror) start_mirror error ;;
    v3) start_registry v3 "$V3" "$work/v3-data" "proxy: {remoteurl: http://127.0.0.1:$UP_V3}" "$v3" ;;
    proxy) start_registry proxy "$PROXY" "$work/proxy-data" "proxy: {remoteurl: http://127.0.0.1:$UP_PROXY}" ;;
  esac
}
# The mirror on the cache it has, at log level $1; "default" passes no --log-level (info).
# Its log goes to a file on disk ($work/mirror.out), as a service's log would.
start_mirror() {
  local level=(); [ "$1" = default ] || level=(--log-level "$1")
  "$bin" serve --listen "127.0.0.1:$MIRROR" --data-dir "$work/mirror-data" \
    --upstream "http://127.0.0.1:$UP_MIRROR" "${level[@]}" >> "$work/mirror.out" 2>&1 &
  echo $! > "$work/mirror.pid"
  wait_http "$MIRROR"
}

# CPU time of a server in clock ticks: utime + stime of the process (all its threads) and of
# its child processes (nginx's workers), from /proc/PID/stat. $1 name (of its pid file).
server_cpu_ticks() {
  local pid p t=0; pid=$(cat "$work/$1.pid")
  for p in "$pid" $(ps -o pid= --ppid "$pid"); do
    [ -r "/proc/$p/stat" ] || continue
    # The fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
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

# Aggregate MB/s of $4 concurrent curls of one blob to /dev/null: all their bytes over the wall
# time from the first start to the last end. Each must get the whole blob. $1 port, $2 repo, $3 digest.
blob_aggregate_mbps() {
  local t0 t1 sizes; t0=$(now)
  sizes=$(seq "$4" | xargs -P "$4" -I{} curl -fsS -o /dev/null -w '%{size_download}\n' "http://127.0.0.1:$1/v2/$2/blobs/$3") \
    || die "$4 concurrent GETs of blob $3 from port $1 failed"
  t1=$(now)
  [ "$(grep -c "^$BIG_LAYER_SIZE\$" <<< "$sizes")" = "$4" ] || die "blob $3 from port $1: not every reader got $BIG_LAYER_SIZE bytes"
  awk -v n="$(( $4 * BIG_LAYER_SIZE ))" -v t="$(calc "$t1 - $t0")" 'BEGIN {printf "%d\n", n / t / 1e6}'
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

# Requests per second for one warm URL: wrk $WRK_LOAD (-t2 -c32) for $WRK_SECONDS, pinned by
# taskset to the CPUs $WRK_CPUS (the servers run unpinned). Prints "RPS ERRORS REQUESTS", where ERRORS
# counts non-2xx answers and socket errors (a valid measurement has none).
wrk_rps() { # $1 port, $2 path
  local o; o=$(taskset -c "$WRK_CPUS" wrk $WRK_LOAD -d"${WRK_SECONDS}s" -H "$ACCEPT" "http://127.0.0.1:$1$2" 2>&1) \
    || die "wrk on port $1 failed"
  echo "$o" >> "$work/wrk.log"
  echo "$o" | awk '/Requests\/sec/ {r = $2}
    / requests in / {n = $1}
    /Non-2xx/ {e += $NF}
    /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10}
    END {printf "%s %d %d\n", r, e, n}'
}
# wrk_rps against the server $1 (a name with a pid file), recorded under the key suffix $3:
# manifest.rps and manifest.errors, and manifest.cpu_us, the server's CPU time
# (server_cpu_ticks before and after the run) per request in microseconds. $2 path.
manifest_measure() {
  local c0 c1 rps errors n
  c0=$(server_cpu_ticks "$1")
  read -r rps errors n < <(wrk_rps "$(port_of "$1")" "$2")
  c1=$(server_cpu_ticks "$1")
  record "manifest.rps.$3" "$rps"; record "manifest.errors.$3" "$errors"
  if [ "$n" -gt 0 ]; then record "manifest.cpu_us.$3" "$(calc "($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $n")"; fi
}
