#!/usr/bin/env bash
# Enforcer benchmark, in ONE run: a small upstream measured directly, through tenantry-enforcer
# (header check + Cedar policy + Redis-shared rate limit on, with a limit too high to reject),
# through tenantry-enforcer with rate limiting off, and through Debian's nginx-light as a
# keep-alive reverse proxy; at 1 and 32 keep-alive connections. Also the enforcer's resident
# memory idle and under load (/proc/PID/status VmRSS), each proxy's own CPU time per request
# (user + system from /proc/PID/stat: steadier than throughput on a shared machine), and, when
# valgrind is installed, the exact user-space instructions per request of the enforcer and of
# nginx (callgrind, one connection; INSTRUCTIONS=0 skips them). Prints JSON lines and tables.
#
# On a machine with two or more cores the load generator is pinned to one core and every server
# (upstream, proxies, Redis) to another, each proxy with one worker; the targets are measured in
# turn, ROUNDS times, and the table shows each target's median round.
#
#   bench/enforcer.sh                      # DURATION=10 CONNS="1 32" ROUNDS=3 by default
#   DURATION=5 CONNS="1 8 32" bench/enforcer.sh
#   PROFILE=release bench/enforcer.sh      # the plain release profile instead of `sidecar`
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-"1 32"}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/pinning.sh
source bench/pinning.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The `sidecar` profile is how the enforcer is shipped (release + fat LTO, see Cargo.toml).
PROFILE=${PROFILE:-sidecar}
cargo build --profile "$PROFILE" --workspace --bin tenantry-enforcer --bin tenantry-upstream --bin tenantry-load --quiet
BIN=$CARGO_TARGET_DIR/$PROFILE

if ! command -v nginx >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light >/dev/null
fi
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

UP=18080 NGINX=18081 ENF=15001 ENF_NORL=15002 REDIS=16379

"${SERVE_ON[@]}" "$BIN/tenantry-upstream" --listen 127.0.0.1:$UP --threads 1 & UP_PID=$!; pids+=("$UP_PID")
"${SERVE_ON[@]}" redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)

# A tenant whose tier allows far more than the harness can send, so nothing is rejected but every
# request still goes through the limiter (leases from Redis).
cat > "$tmp/tenants.yaml" <<YAML
tiers:
  bench:
    limits: {}
    rate_limit: { requests_per_second: 4000000000, burst: 4000000000 }
tenants:
  bench:
    tier: bench
    namespaces: [bench]
YAML

TENANTRY_LOG=warn "${SERVE_ON[@]}" "$BIN/tenantry-enforcer" run --tenant bench --tenants "$tmp/tenants.yaml" \
  --workers "$WORKERS" --listen 127.0.0.1:$ENF --upstream 127.0.0.1:$UP --admin-listen 127.0.0.1:15021 \
  --redis redis://127.0.0.1:$REDIS/ & ENF_PID=$!; pids+=("$ENF_PID")
TENANTRY_LOG=warn "${SERVE_ON[@]}" "$BIN/tenantry-enforcer" run --tenant bench --tenants "$tmp/tenants.yaml" \
  --workers "$WORKERS" --listen 127.0.0.1:$ENF_NORL --upstream 127.0.0.1:$UP --admin-listen 127.0.0.1:15022 \
  --no-rate-limit & ENF_NORL_PID=$!; pids+=("$ENF_NORL_PID")

mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<NGINX
worker_processes $WORKERS;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
"${SERVE_ON[@]}" nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" & NGINX_PID=$!; pids+=("$NGINX_PID")

for p in $UP $NGINX $ENF $ENF_NORL $REDIS 15021 15022; do wait_port $p; done
sleep 0.5
IDLE_RSS=$(rss_kb $ENF_PID)
# nginx serves from its worker process, the master's child.
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
declare -A SERVER_PID=([direct]=$UP_PID [nginx]=$NGINX_WORKER
  [enforcer]=$ENF_PID [enforcer-no-ratelimit]=$ENF_NORL_PID)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system time of a process

results="$tmp/results.jsonl"
: > "$results"
load() { # label url conns
  local pid=${SERVER_PID[$1]} before after out
  before=$(cpu_ticks "$pid")
  out=$("${LOAD_ON[@]}" "$BIN/tenantry-load" "$2" -c "$3" -d "$DURATION" --warmup 1 -H "X-Tenant-ID: bench" --label "$1")
  after=$(cpu_ticks "$pid")
  # The server's CPU time per request (the warm-up second's requests are not counted, so this
  # overstates every target alike, by at most the warm-up's share).
  python3 -c 'import json,sys,os; d=json.loads(sys.argv[1]); d.update(cpu_us=(int(sys.argv[3]) - int(sys.argv[2])) * 1e6
    / os.sysconf("SC_CLK_TCK") / max(d["requests"], 1)); print(json.dumps(d))' "$out" "$before" "$after" | tee -a "$results"
}
PEAK_RSS=0
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    load direct "http://127.0.0.1:$UP/" "$c"
    load nginx "http://127.0.0.1:$NGINX/" "$c"
    load enforcer-no-ratelimit "http://127.0.0.1:$ENF_NORL/" "$c"
    if [ "$c" -le 1 ] || [ "$round" -gt 1 ]; then
      # No sampler here: forking a process every few hundred ms disturbs a one-connection
      # ping-pong on a small machine more than the enforcer does.
      load enforcer "http://127.0.0.1:$ENF/" "$c"
      continue
    fi
    load enforcer "http://127.0.0.1:$ENF/" "$c" &
    lp=$!
    while kill -0 $lp 2>/dev/null; do
      r=$(rss_kb $ENF_PID); [ "$r" -gt "$PEAK_RSS" ] && PEAK_RSS=$r
      sleep 1
    done
    wait $lp
  done
done
ROUND_TRIPS=$(curl -s http://127.0.0.1:15021/metrics | awk '/^tenantry_enforcer_ratelimit_redis_round_trips_total/ {print $2}')
FORWARDED=$(curl -s http://127.0.0.1:15021/metrics | awk '/^tenantry_enforcer_requests_total\{outcome="forwarded"\}/ {print $2}')

echo
echo "enforcer RSS: idle ${IDLE_RSS} kB, peak under load ${PEAK_RSS} kB"
echo "enforcer Redis round trips: ${ROUND_TRIPS:-?} for ${FORWARDED:-?} forwarded requests"
echo "pinning: load generator ${LOAD_ON[*]:-unpinned}, servers ${SERVE_ON[*]:-unpinned}, $WORKERS worker(s) per proxy; $ROUNDS rounds, medians"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = {}
for r in rows:
    runs.setdefault((r["label"], r["connections"]), []).append(r)
def median(label, c):
    rs = runs.get((label, c))
    if not rs:
        return None
    rs = sorted(rs, key=lambda r: r["requests_per_second"])
    m = rs[len(rs) // 2]
    return {**m, "p50_us": statistics.median(r["p50_us"] for r in rs),
            "p99_us": statistics.median(r["p99_us"] for r in rs),
            "cpu_us": statistics.median(r["cpu_us"] for r in rs)}
labels = ["direct", "nginx", "enforcer-no-ratelimit", "enforcer"]
conns = sorted({c for _, c in runs})
print(f'{"target":24} {"conns":>5} {"req/s":>9} {"p50 us":>7} {"p99 us":>7} {"CPU us/req":>10} {"non-2xx":>7} {"errors":>6}  (median of {max(len(v) for v in runs.values())})')
for c in conns:
    for l in labels:
        r = median(l, c)
        if r:
            print(f'{l:24} {c:>5} {r["requests_per_second"]:>9.0f} {r["p50_us"]:>7.0f} {r["p99_us"]:>7.0f} {r["cpu_us"]:>10.1f} {r["non_2xx"]:>7} {r["errors"]:>6}')
print()
for c in conns:
    d, n, e, o = (median(l, c) for l in ("direct", "nginx", "enforcer", "enforcer-no-ratelimit"))
    if not (d and n and e and o):
        continue
    print(f'{c} conn: enforcer/nginx throughput {e["requests_per_second"]/n["requests_per_second"]:.2f}x '
          f'(no rate limit {o["requests_per_second"]/n["requests_per_second"]:.2f}x); '
          f'ratelimit on/off {e["requests_per_second"]/o["requests_per_second"]:.2f}x; '
          f'added latency over direct p50 {e["p50_us"]-d["p50_us"]:.0f} us, p99 {e["p99_us"]-d["p99_us"]:.0f} us '
          f'(nginx: p50 {n["p50_us"]-d["p50_us"]:.0f} us, p99 {n["p99_us"]-d["p99_us"]:.0f} us); '
          f'CPU per request nginx/enforcer {n["cpu_us"]/e["cpu_us"]:.2f}x ({n["cpu_us"]:.1f} vs {e["cpu_us"]:.1f} us)')
PY

if [ "${INSTRUCTIONS:-1}" = 1 ] && ! command -v valgrind >/dev/null; then
  echo "instructions per request: skipped (valgrind not installed)"
  exit 0
fi
[ "${INSTRUCTIONS:-1}" = 1 ] || exit 0
# Exact user-space instructions per request, one connection, under callgrind: the enforcer with
# rate limiting (as above) and nginx in one process (master_process off).
callgrind="valgrind --tool=callgrind --callgrind-out-file=$tmp/callgrind.%p"
per_request() { # label pid port
  local out requests total
  "$BIN/tenantry-load" "http://127.0.0.1:$3/" -c 1 -d 1 -H "X-Tenant-ID: bench" --label warm >/dev/null
  callgrind_control -z "$2" >/dev/null 2>&1
  out=$("$BIN/tenantry-load" "http://127.0.0.1:$3/" -c 1 -d 4 --warmup 0 -H "X-Tenant-ID: bench" --label "$1")
  callgrind_control -d "$2" >/dev/null 2>&1
  requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$out")
  total=$(awk '/^(summary|totals):/ {print $2}' "$tmp/callgrind.$2".* | sort -n | tail -1)
  echo "$1 $(( total / requests ))"
}
CG_ENF=15003 CG_NGINX=18082
TENANTRY_LOG=warn "${SERVE_ON[@]}" $callgrind "$BIN/tenantry-enforcer" run --tenant bench --tenants "$tmp/tenants.yaml" \
  --workers 1 --listen 127.0.0.1:$CG_ENF --upstream 127.0.0.1:$UP --admin-listen 127.0.0.1:15023 \
  --redis redis://127.0.0.1:$REDIS/ 2>/dev/null & CG_ENF_PID=$!; pids+=("$CG_ENF_PID")
sed -e "s/^worker_processes .*/worker_processes 1; master_process off;/" -e "s/listen 127.0.0.1:$NGINX;/listen 127.0.0.1:$CG_NGINX;/" \
  -e "s|pid $tmp/nginx/nginx.pid|pid $tmp/nginx/nginx-cg.pid|" "$tmp/nginx/nginx.conf" > "$tmp/nginx/nginx-cg.conf"
"${SERVE_ON[@]}" $callgrind nginx -c "$tmp/nginx/nginx-cg.conf" -p "$tmp/nginx" 2>/dev/null & CG_NGINX_PID=$!; pids+=("$CG_NGINX_PID")
wait_port $CG_ENF; wait_port $CG_NGINX
ENF_INSTR=$(per_request enforcer $CG_ENF_PID $CG_ENF)
NGINX_INSTR=$(per_request nginx $CG_NGINX_PID $CG_NGINX)
echo
echo "| proxy | user-space instructions per request (callgrind, 1 connection) |"
echo "|---|---:|"
echo "| enforcer | ${ENF_INSTR#* } |"
echo "| nginx | ${NGINX_INSTR#* } |"
echo "enforcer / nginx instructions: $(python3 -c "print(f'{${ENF_INSTR#* } / ${NGINX_INSTR#* }:.2f}x')")"
