#!/usr/bin/env bash
# etcd outages under a transfer load through serve: one member of three dead (serve stays ready, the
# agents keep beating), then two (no quorum: serve degraded but still moving money, metadata changes
# refused with etcd's error), then both back: ready again by itself, no transfer failed.
source "$(dirname "$0")/lib.sh"
plan 10
cluster_up
stale=3 # the serve's etcd probe reports etcd unreachable after 3 s without an answer

all_healthy() { [ "$(health node1)$(health node2)$(health node3)" = healthyhealthyhealthy ]; }
must "every node healthy before the outage" wait_for 20 all_healthy
# The serve draws account ids from etcd in blocks; one account opened now leaves it a block in hand.
code=$(post /v1/accounts '{"customer_name":"Before the outage","balance":"1.00"}')
must "open an account before the outage (HTTP $code: $(cat "$BODY"))" test "$code" = 201
run_bg "$work/etcd-bench.log" "$bin" bench --config "$config" --http --clients 4 --duration 20 --cross-node 0.5 --accounts-per-node 10
loader=$bg_pid
must "the load runs" wait_for 60 grep -q running "$work/etcd-bench.log"
sleep 1

etcd1=$(cluster_json "d['etcd']['members'][0]['pid']")
"$bin" demo kill --dir "$dir" etcd1 >/dev/null
# Watch readyz for longer than the probe's staleness window: had the two members left not answered,
# it would have turned degraded in that time.
samples=""; for _ in $(seq $(( (stale + 2) * 4 ))); do samples="$samples $(readyz)"; sleep 0.25; done
[ -z "$(alive "$etcd1")" ] && [ -z "$(tr -d ' ' <<<"${samples//ready/}")" ] \
  && ok "etcd1 dead (2 of 3 left): serve ready all through $((stale + 2)) s" || bad "etcd1 dead: readyz" "samples:$samples; etcd1 alive: $(alive "$etcd1")"
# The same window is longer than the heartbeat TTL (3 s): beats that had stopped would have lapsed.
all_healthy && ok "etcd1 dead: the agents keep beating (every node healthy after the TTL)" || bad "heartbeats with etcd1 dead" "$(curl -s -m 10 "$api/v1/cluster" | head -c 600)"

"$bin" demo kill --dir "$dir" etcd2 >/dev/null
is_degraded() { [ "$(readyz)" = degraded ]; }
wait_for $((stale + 10)) is_degraded
body=$(curl -s -m 10 -w ' %{http_code}' "$api/readyz")
grep -q '"degraded"' <<<"$body" && grep -q ' 200$' <<<"$body" && ok "etcd1 and etcd2 dead (no quorum): /readyz 200 degraded, still in the load balancer" || bad "no quorum: readyz degraded" "$body"
code=$(get /v1/cluster)
grep -q '"etcd":"unreachable"' "$BODY" && ok "GET /v1/cluster says etcd unreachable" || bad "GET /v1/cluster etcd state" "$code $(head -c 300 "$BODY")"
code=$(post /v1/accounts '{"customer_name":"During the outage","balance":"1.00"}')
[ "$code" = 201 ] && ok "opening an account without etcd works from the id block in hand" || bad "open account without etcd" "$code $(cat "$BODY")"
out=$(timeout 60 "$bin" ctl init --config "$config" --force 2>&1); rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "no etcd member answered" <<<"$out" \
  && ok "a metadata change (ctl init --force) without etcd quorum is refused: $(grep -o "no etcd member answered (tried [^)]*)" <<<"$out" | head -1)" || bad "metadata change without quorum (exit $rc)" "$out"
sleep 2
"$bin" demo restart --dir "$dir" etcd1 >/dev/null
"$bin" demo restart --dir "$dir" etcd2 >/dev/null
is_ready() { [ "$(readyz)" = ready ]; }
wait_for 30 is_ready
is_ready && ok "etcd members back: serve ready again by itself" || bad "serve not ready after etcd came back" "$(curl -s -m 10 "$api/readyz")"
wait "$loader"
summary=$(grep "ledger http" "$work/etcd-bench.log")
[ -n "$summary" ] && grep -q " 0 errors" <<<"$summary" && ok "transfers went on through both outages: $(sed 's/.*(\(.*\)).*/\1/' <<<"$summary")" || bad "errors during the etcd outages" "$(tail -4 "$work/etcd-bench.log")"
wait_for 15 all_healthy
all_healthy && ok "every node healthy again after the outage" || bad "nodes after the outage" "$(curl -s -m 10 "$api/v1/cluster" | head -c 600)"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the etcd outages" || bad "ctl verify after the etcd outages" "$out"
