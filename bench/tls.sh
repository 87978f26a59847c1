#!/usr/bin/env bash
# Blobs over TLS (issue 14): a warm 256 MiB blob through the mirror's own TLS beside nginx
# (nginx-light, the same certificate, `ssl_protocols TLSv1.3`, sendfile on) serving the same
# file, interleaved round by round, both over HTTP/1.1 with curl; then the mirror's peak RSS
# while 8 concurrent TLS readers pull one cold 256 MiB blob.
# --plain: the same over plain HTTP, the mirror with --no-sendfile (its bodies as buffers) and
# nginx without TLS; then also the peak RSS with 8 slow readers (32 MB/s each) of the warm blob,
# and with 8 concurrent ranges (the second half) of another cold blob, relayed from upstream.
#   Usage: bash bench/tls.sh [--rounds N] [--no-build] [--plain] [--bin PATH]
# Prints the medians, the ratio within each round and its median, and the RSS.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=5 build=1 plain=0 bin=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --no-build) build=0 ;;
    --plain) plain=1 ;;
    --bin) bin=$2; build=0; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
bash "$here/scripts/install-deps.sh" --bench
[ $build = 0 ] || (cd "$here" && swift build -c release --product registry-mirror 2>&1 | tail -1)
bin=${bin:-$here/.build/release/registry-mirror}
w=$(mktemp -d /tmp/tlsbench.XXXX)
trap 'for p in $w/*.pid; do kill $(cat $p) 2>/dev/null || true; done; [ -n "${BENCH_KEEP:-}" ] || rm -rf $w' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null ${2:-} "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
say() { echo "[$(date +%T)] $*" >&2; }

say "a CA and a certificate for 127.0.0.1"
openssl req -x509 -newkey rsa:2048 -nodes -keyout $w/ca.key -out $w/ca.crt -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout $w/tls.key -out $w/tls.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > $w/san.ext
openssl x509 -req -in $w/tls.csr -CA $w/ca.crt -CAkey $w/ca.key -CAcreateserial -days 2 -extfile $w/san.ext -out $w/tls.crt 2>/dev/null

say "an upstream with a 256 MiB layer, and a second one for the cold test"
up=$(port)
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$w/up" "$up" > $w/up.yml
docker-registry serve $w/up.yml > $w/up.log 2>&1 & echo $! > $w/up.pid
wait_up "http://127.0.0.1:$up/v2/"
python3 "$here/bench/make-layout.py" $w/layout v1 256 >/dev/null
python3 "$here/bench/make-layout.py" $w/layout2 v1 256 >/dev/null
skopeo copy -q --dest-tls-verify=false oci:$w/layout:v1 docker://127.0.0.1:$up/bench/tls:v1
skopeo copy -q --dest-tls-verify=false oci:$w/layout2:v1 docker://127.0.0.1:$up/bench/cold:v1
if [ $plain = 1 ]; then
  python3 "$here/bench/make-layout.py" --seed 3 $w/layout3 v1 256 >/dev/null
  skopeo copy -q --dest-tls-verify=false oci:$w/layout3:v1 docker://127.0.0.1:$up/bench/ranged:v1
fi
layer() { curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$up/v2/$1/manifests/v1" |
  python3 -c 'import json,sys; print(max(json.load(sys.stdin)["layers"], key=lambda l: l["size"])["digest"])'; }
warm=$(layer bench/tls); cold=$(layer bench/cold)
if [ $plain = 1 ]; then
  ranged=$(layer bench/ranged) scheme=http tls=() listen= mode="plain HTTP (--no-sendfile)"
else
  scheme=https tls=(--cacert $w/ca.crt) listen=ssl mode=TLS
fi
path=/v2/bench/tls/blobs/$warm

say "nginx on the same file ($scheme)"
ng=$(port); mkdir -p $w/ng/tmp $w/ng/root/v2/bench/tls/blobs
curl -s -o "$w/ng/root$path" "http://127.0.0.1:$up$path"   # the bytes the registry serves
cat > $w/ng/nginx.conf <<NGINX
daemon off;
user $(id -un);
worker_processes auto;
pid $w/ng/nginx.pid;
error_log $w/ng/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $w/ng/tmp; proxy_temp_path $w/ng/tmp; fastcgi_temp_path $w/ng/tmp;
  uwsgi_temp_path $w/ng/tmp; scgi_temp_path $w/ng/tmp;
  types {}
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$ng $listen;
    ssl_certificate $w/tls.crt;
    ssl_certificate_key $w/tls.key;
    ssl_protocols TLSv1.3;
    root $w/ng/root;
  }
}
NGINX
nginx -p $w/ng -c $w/ng/nginx.conf -e $w/ng/error.log > $w/ng/out 2>&1 & echo $! > $w/nginx.pid
wait_up "$scheme://127.0.0.1:$ng$path" "${tls[*]} -r 0-0"

mirror() { # $1 data dir; starts the mirror (TLS, or plain with --no-sendfile), prints its port
  local p; p=$(port)
  if [ $plain = 1 ]; then
    printf 'http:\n  sendfile: false\n' > $w/mirror.yaml
  else
    printf 'http:\n  tls:\n    certificate: %s\n    key: %s\n' $w/tls.crt $w/tls.key > $w/mirror.yaml
  fi
  "$bin" serve --config $w/mirror.yaml --listen 127.0.0.1:$p --data-dir "$1" --upstream http://127.0.0.1:$up --log-level error > $w/mirror.log 2>&1 &
  echo $! > $w/mirror.pid
  wait_up "$scheme://127.0.0.1:$p/v2/" "${tls[*]}" >&2
  echo $p
}
get() { curl -s --http1.1 "${tls[@]}" -o /dev/null -w '%{speed_download}\n' "$1"; }
peak() { awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$(cat $w/mirror.pid)/status; }

say "warm blob, $rounds interleaved rounds"
mp=$(mirror $w/data)
get "$scheme://127.0.0.1:$mp$path" >/dev/null   # the fill
: > $w/res
for r in $(seq "$rounds"); do
  echo "$(get "$scheme://127.0.0.1:$mp$path") $(get "$scheme://127.0.0.1:$ng$path")" >> $w/res
done
kill $(cat $w/mirror.pid); wait $(cat $w/mirror.pid) 2>/dev/null || true

slow=- relayed=-
if [ $plain = 1 ]; then
  say "8 slow readers (32 MB/s each) of the warm 256 MiB blob"
  mp=$(mirror $w/data)
  readers=()
  for i in $(seq 8); do curl -s --limit-rate 32M -o /dev/null "http://127.0.0.1:$mp$path" & readers+=($!); done
  for pid in "${readers[@]}"; do wait $pid || true; done
  slow=$(peak)
  kill $(cat $w/mirror.pid); wait $(cat $w/mirror.pid) 2>/dev/null || true

  say "8 concurrent ranges (the second half) of a cold 256 MiB blob, relayed"
  mp=$(mirror $w/data3)
  readers=()
  for i in $(seq 8); do curl -s -r $((128 << 20))-$(((256 << 20) - 1)) -o /dev/null "http://127.0.0.1:$mp/v2/bench/ranged/blobs/$ranged" & readers+=($!); done
  for pid in "${readers[@]}"; do wait $pid || true; done
  relayed=$(peak)
  kill $(cat $w/mirror.pid); wait $(cat $w/mirror.pid) 2>/dev/null || true
fi

say "8 concurrent $mode readers of a cold 256 MiB blob"
mp=$(mirror $w/data2)
readers=()
for i in $(seq 8); do curl -s "${tls[@]}" -o /dev/null "$scheme://127.0.0.1:$mp/v2/bench/cold/blobs/$cold" & readers+=($!); done
for pid in "${readers[@]}"; do wait $pid || true; done
rss=$(peak)
complete=$(curl -s "${tls[@]}" "$scheme://127.0.0.1:$mp/v2/bench/cold/blobs/$cold" | sha256sum | cut -d' ' -f1)

python3 - "$w/res" "$rss" "$complete" "${cold#sha256:}" "$rounds" "$mode" "$slow" "$relayed" <<'PY'
import sys, statistics as st
rows=[list(map(float, l.split())) for l in open(sys.argv[1])]
ours=[r[0]/1e6 for r in rows]; ng=[r[1]/1e6 for r in rows]; q=[r[0]/r[1] for r in rows]
rng=lambda v: f"({min(v):.2f}–{max(v):.2f})" if min(v)!=max(v) else ""
mode=sys.argv[6]
print(f"warm 256 MiB blob over {mode}, HTTP/1.1, MB/s, median of {sys.argv[5]}: registry-mirror {st.median(ours):.0f} ({min(ours):.0f}–{max(ours):.0f}), nginx {st.median(ng):.0f} ({min(ng):.0f}–{max(ng):.0f})")
tls=mode=="TLS"
print(f"ours ÷ nginx, within each round: {st.median(q):.2f} {rng(q)}" + ("  (target ≥ 0.8)" if tls else ""))
print(f"peak RSS of the mirror, 8 concurrent {mode} readers of a cold 256 MiB blob: {sys.argv[2]} MiB" + (" (target < 64)" if tls else ""))
if sys.argv[7] != "-":
    print(f"peak RSS of the mirror, 8 readers at 32 MB/s of the warm 256 MiB blob: {sys.argv[7]} MiB")
    print(f"peak RSS of the mirror, 8 relayed ranges (128 MiB each) of a cold 256 MiB blob: {sys.argv[8]} MiB")
print(f"the cold blob afterwards hashes to its digest: {'yes' if sys.argv[3]==sys.argv[4] else 'NO'}")
PY
