# Helpers every acceptance section sources. Not run by itself.
#
# Adding a section: create scripts/acceptance.d/NN-name.sh (NN: two digits, sections run in that
# order; scripts/acceptance picks up every NN-*.sh), make it executable, and write:
#
#   #!/usr/bin/env bash
#   # What this section checks, in a sentence or two.
#   source "$(dirname "$0")/lib.sh"
#   plan 4          # the number of ok/bad/check calls it makes; fewer (an early death) is a failure
#   cluster_up      # its own `demo up` cluster under its own `mktemp -d` directory ($work)
#   check "status answers" "$bin" ctl status --config "$config"
#   …
#
# Every section runs on its own: `scripts/acceptance NN-name` (or `scripts/acceptance.d/NN-name.sh`
# with SHARDBANK_BIN set). On exit — also on failure or an unset variable — the EXIT trap stops
# every process the section started (track_pid, start_serve, run_bg), takes the cluster down with
# `demo down`, reports any of its processes still alive as a failure, and deletes $work — unless a
# check failed: then $work stays, with the cluster's serve and agent logs copied to cluster-logs/.
# Scratch files go under $work, never at a fixed path.

set -uo pipefail
export PATH="/opt/swift/usr/bin:$PATH"

section=$(basename "$0" .sh)
# What the sections drive the cluster with, and the Debian package of each.
for need in curl:curl python3:python3 pgrep:procps mariadb:mariadb-client etcdctl:etcd-client timeout:coreutils; do
  command -v "${need%%:*}" >/dev/null 2>&1 && continue
  echo "FAIL $section: ${need%%:*} is missing: install it with \`apt-get install -y ${need#*:}\` (scripts/install-deps does)"
  exit 1
done
bin="${SHARDBANK_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && swift build --show-bin-path)/shardbank}"
work=$(mktemp -d "${TMPDIR:-/tmp}/shardbank-acceptance-$section.XXXXXX")
dir="$work/cluster"          # the demo cluster's directory (demo down deletes it)
config="$dir/shardbank.json"
BODY="$work/body.json"       # the last response body `post`/`get` received
api=""
passed=0; failed=0
started_pids=()

# One line per check: "PASS name" or "FAIL name" (plus the evidence, indented).
ok()  { echo "PASS $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/^/     /'; fi; failed=$((failed + 1)); }
check() { # name command… — passes when the command succeeds
  local name=$1; shift
  local out; if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi
}
# Set-up that must work for the rest to mean anything: on failure the section stops (the runner
# then counts the checks it did not run as failed).
must() { # description command…
  local what=$1; shift
  local out; if ! out=$("$@" 2>&1); then echo "FAIL $section: $what" ; printf '%s\n' "$out" | sed 's/^/     /'; failed=$((failed + 1)); exit 1; fi
}
# Declares how many checks the section makes; the runner reads this line.
plan() { echo "PLAN $1"; }

# Waits until `command…` succeeds, polling every 0.1 s, for at most SECONDS; fails after that.
wait_for() { # seconds command…
  local seconds=$1; shift
  local deadline=$(( $(date +%s%N) + seconds * 1000000000 ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# A TCP port on 127.0.0.1 that was free a moment ago (whoever binds it retries on a clash).
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

# Prints a field of the JSON on stdin: json "d['account_id']".
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# A field of cluster.json: cluster_json "','.join(d['etcd']['endpoints'])".
cluster_json() { json "$1" < "$dir/cluster.json"; }

# HTTP. Every call has a deadline (-m): a hung server is a failure, not a hung test.
post() { # path body [idempotency-key] [base url] → prints the status code; the body lands in $BODY
  curl -s -m 30 -o "$BODY" -w '%{http_code}' -X POST "${4:-$api}$1" -H 'Content-Type: application/json' ${3:+-H "Idempotency-Key: $3"} -d "$2"
}
get() { # path [base url] → prints the status code; the body lands in $BODY
  curl -s -m 30 -o "$BODY" -w '%{http_code}' "${2:-$api}$1"
}
# Every transfer id in FILE (`bench --acknowledged`) answers GET /v1/transfers/{id} with state
# committed. Prints "N acknowledged, N committed" and fails naming the first few that are not.
acknowledged_committed() { # file [base url]
  python3 - "$1" "${2:-$api}" <<'PY'
import http.client, json, sys, urllib.parse
ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]
url = urllib.parse.urlsplit(sys.argv[2])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
bad = []
for i in ids:
    conn.request("GET", "/v1/transfers/" + urllib.parse.quote(i, safe=""))
    r = conn.getresponse()
    body = r.read()
    state = json.loads(body).get("state") if r.status == 200 else None
    if state != "committed":
        bad.append(f"{i}: HTTP {r.status} {body[:120].decode(errors='replace')}")
print(f"{len(ids)} acknowledged, {len(ids) - len(bad)} committed" + ("; not: " + " | ".join(bad[:3]) if bad else ""))
sys.exit(1 if bad or not ids else 0)
PY
}
health() { # node [base url] → the node's health state as that serve sees it
  curl -s -m 10 "${2:-$api}/v1/cluster/nodes/$1/health" | json "d['state']" 2>/dev/null
}
readyz() { curl -s -m 10 "${1:-$api}/readyz" | json "d['status']" 2>/dev/null; }
is_state() { [ "$(health "$1" "${3:-}")" = "$2" ]; }
# Waits for a node to reach a state; prints the seconds it took. Bounds are generous on purpose:
# this is a test of what happens, not of how fast (benchmarks measure speed).
wait_state() { # node state seconds [base url]
  local start; start=$(date +%s%N)
  wait_for "$3" is_state "$1" "$2" "${4:-}" || return 1
  python3 -c "print(f'{($(date +%s%N) - $start) / 1e9:.1f}')"
}

# Runs SQL on every storage node (not the spares) and prints the rows. Fails when any node's query
# fails: an error is never an empty answer.
nodes_sql() {
  local rows port pw
  rows=$(cluster_json "'\n'.join(f\"{n['port']} {n['password']}\" for n in d['nodes'] if not n['spare'])") || return 1
  while read -r port pw; do
    timeout 30 mariadb --connect-timeout=10 -N -h127.0.0.1 -P"$port" -ubank -p"$pw" bank_db -e "$1" || return 1
  done <<<"$rows"
}
# The number of prepared XA branches over every storage node; fails when a node does not answer.
prepared_count() { local out; out=$(nodes_sql 'XA RECOVER') || return 1; grep -c . <<<"$out" || true; }
none_prepared() { local n; n=$(prepared_count) && [ "$n" -eq 0 ]; }

etcd_endpoints() { cluster_json "','.join(d['etcd']['endpoints'])"; }

# Processes the section starts by hand: remembered, and stopped in the EXIT trap whatever happens.
track_pid() { started_pids+=("$1"); }
stop_pid() { # pid — SIGTERM, then SIGKILL after 10 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -CONT "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
# Starts `command…` in the background with its output in LOG; sets $bg_pid.
run_bg() { # log command…
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  bg_pid=$!
  track_pid "$bg_pid"
}
# Starts another `shardbank serve` on a free port and waits until it answers /readyz; sets
# $serve_pid and $serve_url. Extra environment as NAME=value arguments. Tries another port when
# the chosen one was taken in between (the serve then exits at start-up).
start_serve() { # name [NAME=value…]
  local name=$1; shift
  local port attempt
  for attempt in 1 2 3; do
    port=$(free_port)
    run_bg "$work/serve-$name.log" env "$@" SHARDBANK_HTTP_PORT="$port" "$bin" serve --config "$config"
    serve_pid=$bg_pid; serve_url="http://127.0.0.1:$port"
    wait_for 60 serve_answers "$serve_url" "$serve_pid"
    if kill -0 "$serve_pid" 2>/dev/null; then
      curl -s -m 2 -o /dev/null "$serve_url/readyz" && return 0
      break # alive but not answering: not a port clash
    fi
    grep -qi 'address already in use' "$work/serve-$name.log" || break
  done
  echo "FAIL $section: serve $name did not become ready; its log:"; tail -20 "$work/serve-$name.log" | sed 's/^/     /'
  failed=$((failed + 1)); exit 1
}
serve_answers() { # url pid — fails at once when the process has gone (wait_for then times out quickly)
  kill -0 "$2" 2>/dev/null || return 0
  curl -s -m 2 -o /dev/null "$1/readyz"
}

# Every process of the cluster that is still running, by cluster.json's pids and by command lines
# naming the section's directory (a process found by `pgrep` needs the procps package).
cluster_pids() { [ -f "$dir/cluster.json" ] && cluster_json "' '.join(str(p) for p in [n['pid'] for n in d['nodes']] + [n['agent_pid'] for n in d['nodes'] if n.get('agent_pid')] + [m['pid'] for m in d['etcd']['members']] + ([d['api']['pid']] if d.get('api') else []))"; }
alive() { # pids… → prints those still running and naming $work (a pid may have been reused by
  # then; a zombie has exited, only its reaping is pending)
  local p state
  for p in "$@"; do
    state=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || continue
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$work/" || continue
    [ -n "$state" ] && [ "$state" != Z ] && printf '%s(%s) ' "$p" "$state"
  done
}
leftovers() { # pids… → prints every listed pid still alive and every process naming $work
  local found; found=$(alive "$@")
  local named; named=$(pgrep -f -- "$work/" | grep -vx "$$" | tr '\n' ' ')
  [ -z "$named" ] || found="$found named:$named"
  printf '%s' "$found"
}

# Starts the section's cluster: `demo up` with extra arguments (e.g. --spare 1).
cluster_up() {
  local out
  if ! out=$("$bin" demo up --dir "$dir" "$@" 2>&1); then
    echo "FAIL $section: demo up $*"; printf '%s\n' "$out" | sed 's/^/     /'
    local log; for log in "$dir"/*/install.log "$dir"/*/mariadbd.log "$dir"/*/etcd.log; do
      [ -s "$log" ] && { echo "     -- ${log#"$dir"/} (last lines)"; tail -8 "$log" | sed 's/^/     /'; }
    done
    failed=$((failed + 1)); exit 1
  fi
  api=$(cluster_json "d['api']['url']")
}

finish() {
  local status=$?
  trap - EXIT
  local known=(); read -r -a known <<<"$(cluster_pids 2>/dev/null)"
  local p; for p in "${started_pids[@]}"; do stop_pid "$p"; done
  # demo down deletes the cluster's directory: a failed section first keeps its serve and agent logs.
  if { [ "$failed" -ne 0 ] || [ "$status" -ne 0 ]; } && [ -d "$dir" ]; then
    mkdir -p "$work/cluster-logs" && cp "$dir"/*.log "$work/cluster-logs/" 2>/dev/null
  fi
  [ -f "$dir/cluster.json" ] && "$bin" demo down --dir "$dir" >"$work/down.log" 2>&1
  local left; left=$(leftovers "${known[@]}" "${started_pids[@]}")
  if [ -n "$left" ]; then
    echo "FAIL $section: processes left after the section's clean-up: $left"; failed=$((failed + 1))
    for p in $(pgrep -f -- "$work/"); do [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null; done
  fi
  # A failed section keeps its directory (logs of every process it ran) for whoever looks next.
  if [ "$failed" -eq 0 ] && [ "$status" -eq 0 ]; then rm -rf "$work"; else echo "     kept for inspection: $work"; fi
  echo "DONE $section: $passed passed, $failed failed"
  [ "$failed" -eq 0 ] && exit "$status"
  exit 1
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
