#!/usr/bin/env bash
# Webhook load harness: our webhook beside two yardsticks on the same axum+rustls stack, in one
# run, on this machine: a bare echo (the transport alone) and a parse-and-echo (the transport plus
# parsing the review into a serde_json Value and echoing its uid: the floor for any decision).
# HTTPS keep-alive, the realistic Pod CREATE review: as sent, on /mutate, and already mutated, as
# /validate receives it; each against a parse-and-echo of the same body.
# Also resident memory idle and per tracked object (100,000 synthetic objects).
#
# On a machine with two or more cores the load generator is pinned to one core and the three
# servers to another (so each runs one worker); the targets are measured in turn, ROUNDS times,
# and the ratios compare each target's median round.
#
# Last, when valgrind is installed, the exact instructions per review end to end (callgrind, one
# connection): wall-clock ratios on a shared machine swing from run to run, instruction counts
# do not. INSTRUCTIONS=0 skips them.
#
#   bench/webhook.sh [SECONDS]        (default 10 s per measurement; CONNS="1 16 32" ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
CONNS=${CONNS:-"1 16 32"}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/pinning.sh
source bench/pinning.sh
cargo build --release -q -p tenantry-webhook --bins --examples
cargo build --release -q -p tenantry-cli
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

$bin/tenantry certs generate --name 127.0.0.1 --out "$work" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
wait_ready() { for _ in $(seq 2400); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready" >&2; return 1; }
wait_port() { for _ in $(seq "${2:-200}"); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# The review /validate receives: the fixture with the webhook's own mutation applied.
python3 - "$work" <<'PY'
import json, sys, base64, subprocess
work = sys.argv[1]
review = json.load(open("webhook/tests/fixtures/pod-create.json"))
out = subprocess.run(["target/release/tenantry", "review", "-f", "-", "--user", "alice", "--group", "acme-devs",
                      "-n", "acme-dev", "-o", "json"], input=json.dumps(review["request"]["object"]),
                     capture_output=True, text=True)
review["request"]["object"] = json.loads(out.stdout)["object"]
json.dump(review, open(f"{work}/validate.json", "w"))
PY

start_webhook() { # $1 state file; $PROFILE: a command prefix (valgrind)
  local port ops
  port=$(free_port); ops=$(free_port)
  TENANTRY_LOG=warn "${SERVE_ON[@]}" ${PROFILE:-} $bin/tenantry-webhook --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$ops \
    --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --tenants examples/tenants.yaml \
    --policies policies --state "$1" >/dev/null 2>&1 &
  WEBHOOK_PID=$!; WEBHOOK_PORT=$port
  wait_ready "$ops"
}

printf '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"none","namespace":"default"}}\n' > "$work/empty.yaml"
start_webhook "$work/empty.yaml"
sleep 1
idle_rss=$(rss_kb $WEBHOOK_PID)
echo_port=$(free_port)
"${SERVE_ON[@]}" $bin/examples/echo_server 127.0.0.1:$echo_port "$work/tls.crt" "$work/tls.key" &
ECHO_PID=$!
wait_port $echo_port
echo_idle_rss=$(rss_kb $ECHO_PID)
parse_port=$(free_port)
"${SERVE_ON[@]}" $bin/examples/echo_server 127.0.0.1:$parse_port "$work/tls.crt" "$work/tls.key" --parse &
PARSE_PID=$!
wait_port $parse_port

echo "machine: ${#cpus[@]} cores, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
echo "idle RSS: webhook ${idle_rss} kB, echo ${echo_idle_rss} kB"
echo "pinning: load on cpu ${cpus[0]}, servers on cpu ${cpus[1]:-${cpus[0]}}; $ROUNDS rounds of ${secs} s"
mutate_body=webhook/tests/fixtures/pod-create.json
results="$work/results.jsonl"
: > "$results"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system time of a process
load() { # label pid port conns [path body]
  local out before after
  before=$(cpu_ticks "$2")
  out=$("${LOAD_ON[@]}" $bin/examples/load 127.0.0.1:$3 "${5:-/validate}" "${6:-$work/validate.json}" "$work/ca.crt" "$4" "$secs")
  after=$(cpu_ticks "$2")
  echo "connections=$4 $(printf '%-11s' "$1") $out"
  # The server's own CPU time per request: throughput counts the neighbours' noise on this
  # shared machine too, CPU time mostly does not.
  python3 -c 'import json,sys,os; d=json.loads(sys.argv[3]); d.update(target=sys.argv[1], connections=int(sys.argv[2]),
cpu_us=(int(sys.argv[5]) - int(sys.argv[4])) * 1e6 / os.sysconf("SC_CLK_TCK") / max(d["requests"], 1)); print(json.dumps(d))' \
    "$1" "$4" "$out" "$before" "$after" >> "$results"
}
for _ in $(seq 1 "$ROUNDS"); do
  for conns in $CONNS; do
    load echo $ECHO_PID $echo_port "$conns"
    load parse-echo $PARSE_PID $parse_port "$conns"
    load webhook $WEBHOOK_PID "$WEBHOOK_PORT" "$conns"
    # /mutate receives the review as sent (6.4 KB): its yardstick parses that same body.
    load parse-echo-m $PARSE_PID $parse_port "$conns" /validate "$mutate_body"
    load mutate $WEBHOOK_PID "$WEBHOOK_PORT" "$conns" /mutate "$mutate_body"
  done
done
# The median round of each target, and the ratios the issue asks for. The bare echo is measured
# once, with the /validate body, and shown on both endpoints' rows.
python3 - "$results" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def median(target, conns):
    rs = sorted((r for r in runs if r["target"] == target and r["connections"] == conns), key=lambda r: r["rps"])
    return rs[len(rs) // 2]
n = lambda x: f"{x:,}".replace(",", " ")
print()
print("| endpoint | connections | echo req/s | parse-echo req/s | webhook req/s | webhook / echo | webhook / parse-echo | CPU µs per review, parse-echo / webhook (ratio) | p50 µs parse-echo / webhook (added) |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
def cpu(target, conns):
    xs = sorted(r["cpu_us"] for r in runs if r["target"] == target and r["connections"] == conns)
    return xs[len(xs) // 2]
for endpoint, parse, ours in (("/validate", "parse-echo", "webhook"), ("/mutate", "parse-echo-m", "mutate")):
    for c in sorted({r["connections"] for r in runs}):
        e, p, w = (median(t, c) for t in ("echo", parse, ours))
        pc, wc = cpu(parse, c), cpu(ours, c)
        print(f"| {endpoint} | {c} | {n(e['rps'])} | {n(p['rps'])} | {n(w['rps'])} | {w['rps']/e['rps']:.2f}x | {w['rps']/p['rps']:.2f}x "
              f"| {pc:.0f} / {wc:.0f} ({pc/wc:.2f}x) | {p['p50_us']} / {w['p50_us']} (+{w['p50_us'] - p['p50_us']}) |")
PY
echo "webhook RSS after load: $(rss_kb $WEBHOOK_PID) kB"
kill $WEBHOOK_PID $ECHO_PID $PARSE_PID; wait $WEBHOOK_PID $ECHO_PID $PARSE_PID 2>/dev/null || true

# Memory per tracked object: 100,000 synthetic pods and configmaps in tenant namespaces.
python3 - "$work/big.yaml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(100_000):
        ns = ("acme-dev", "acme-prod", "globex-prod")[i % 3]
        if i % 2:
            f.write(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: {ns}}}\n"
                    f"spec: {{containers: [{{name: c, resources: {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {{memory: 128Mi}}}}}}]}}\n")
        else:
            f.write(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: {ns}}}\n")
PY
start_webhook "$work/big.yaml"
sleep 1
big_rss=$(rss_kb $WEBHOOK_PID)
echo "RSS with 100,000 tracked objects: ${big_rss} kB; per object: $(( (big_rss - idle_rss) * 1024 / 100000 )) bytes"
kill $WEBHOOK_PID; wait $WEBHOOK_PID 2>/dev/null || true

# Exact instructions per review, end to end (TLS, HTTP, parse, decision, response, metrics):
# each server under callgrind, counters zeroed once it is ready, one connection for a few
# seconds, counters dumped; the total divided by the reviews served.
if [ "${INSTRUCTIONS:-1}" = 1 ] && ! command -v valgrind >/dev/null; then
  echo "instructions per review: skipped (valgrind not installed)"
  exit 0
fi
[ "${INSTRUCTIONS:-1}" = 1 ] || exit 0
callgrind="valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p"
per_review() { # pid label port path body
  local out requests total
  callgrind_control -z "$1" >/dev/null 2>&1
  out=$($bin/examples/load 127.0.0.1:$3 "$4" "$5" "$work/ca.crt" 1 5)
  callgrind_control -d "$1" >/dev/null 2>&1
  requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$out")
  total=$(awk '/^(summary|totals):/ {print $2}' "$work/callgrind.$1".* | sort -n | tail -1)
  echo "$2 $(( total / requests ))"
}
PROFILE=$callgrind start_webhook "$work/empty.yaml"
$callgrind $bin/examples/echo_server 127.0.0.1:$parse_port "$work/tls.crt" "$work/tls.key" --parse 2>/dev/null &
PARSE_PID=$!
wait_port $parse_port 2400 # valgrind starts slowly
counts="$work/instructions.txt"
{
  per_review $WEBHOOK_PID /validate "$WEBHOOK_PORT" /validate "$work/validate.json"
  per_review $PARSE_PID parse-echo "$parse_port" /validate "$work/validate.json"
  rm -f "$work"/callgrind.*.[0-9]*
  per_review $WEBHOOK_PID /mutate "$WEBHOOK_PORT" /mutate "$mutate_body"
  per_review $PARSE_PID parse-echo-m "$parse_port" /validate "$mutate_body"
} > "$counts"
kill $WEBHOOK_PID $PARSE_PID; wait $WEBHOOK_PID $PARSE_PID 2>/dev/null || true
python3 - "$counts" <<'PY'
import sys
c = dict(l.split() for l in open(sys.argv[1]))
print()
print("| endpoint | instructions per review, webhook | parse-and-echo of the same body | webhook / parse-echo (throughput bound) |")
print("|---|---:|---:|---:|")
for endpoint, parse in (("/validate", "parse-echo"), ("/mutate", "parse-echo-m")):
    w, p = int(c[endpoint]), int(c[parse])
    print(f"| {endpoint} | {w/1000:,.0f} k | {p/1000:,.0f} k | {p/w:.2f}x |")
PY
