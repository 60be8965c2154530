#!/usr/bin/env bash
# Health: every serve judges each node from its agent's leased heartbeats. A killed mariadbd and a
# hung agent make the node down in every serve; requests that need it are refused from the health
# view (no connection attempt) while the rest of the bank goes on; a SIGTERMed agent revokes its
# lease on the way out. Bounds are the heartbeat TTL (3 s) + 2 s: what is checked is the state
# reached, not the speed.
source "$(dirname "$0")/lib.sh"
plan 15
cluster_up
endpoints=$(etcd_endpoints)
ttl_bound=5

all_healthy() { [ "$(health node1)$(health node2)$(health node3)" = healthyhealthyhealthy ]; }
wait_for 20 all_healthy
all_healthy && ok "health: node1–node3 healthy" || bad "health: node1–node3 healthy" "$(curl -s -m 10 "$api/v1/cluster")"
code=$(get /v1/cluster)
[ "$code" = 200 ] && python3 -c "import json,sys; d=json.load(sys.stdin); assert [h['state'] for h in d['health']]==['healthy']*3 and d['etcd']=='ok'" < "$BODY" \
  && ok "GET /v1/cluster shows node states and etcd ok" || bad "GET /v1/cluster health" "$code $(cat "$BODY")"
code=$(get /v1/cluster/nodes/node9/health)
[ "$code" = 404 ] && grep -q unknown_node "$BODY" && ok "health of an unknown node → 404 unknown_node" || bad "unknown node health" "$code $(cat "$BODY")"
open() { # name balance → prints the new account's id
  local code; code=$(post /v1/accounts "{\"customer_name\":\"$1\",\"balance\":\"$2\"}")
  [ "$code" = 201 ] || { echo "open $1: HTTP $code $(cat "$BODY")" >&2; return 1; }
  json "d['account_id']" < "$BODY"
}
n3=$(open "On node3" 70000.00) && n1=$(open "On node1" 500.00) && n2=$(open "On node2" 20000.00)
must "open three accounts" test -n "${n2:-}"

# A second serve, so that "every serve" sees the node go down.
start_serve second
second=$serve_url
"$bin" demo kill --dir "$dir" node3 >/dev/null
took=$(wait_state node3 down $ttl_bound) && ok "kill -9 node3's mariadbd: down ($took s; TTL 3 s)" || bad "node3 not down within TTL + 2 s" "$(curl -s -m 10 "$api/v1/cluster/nodes/node3/health")"
wait_state node3 down $ttl_bound "$second" >/dev/null && ok "the second serve shows node3 down too" || bad "second serve's view of node3" "$(health node3 "$second")"
stop_pid "$serve_pid"
code=$(curl -s -m 30 -o "$BODY" -w '%{http_code}' -D "$work/headers" "$api/v1/accounts/$n3")
# "is down" is the health view's refusal; a connection attempt would fail with "cannot connect".
[ "$code" = 503 ] && grep -q node_unavailable "$BODY" && grep -q 'node node3 is down' "$BODY" && grep -qi '^retry-after:' "$work/headers" \
  && ok "an account on node3 is refused from the health view: 503 node_unavailable, node3 is down, Retry-After" || bad "refusal of node3's account" "$code $(cat "$BODY")"
code=$(post /v1/transfers "{\"from\":$n2,\"to\":$n1,\"amount\":\"1.00\"}")
[ "$code" = 201 ] && ok "a transfer between node2 and node1 goes on while node3 is down" || bad "transfer between healthy nodes" "$code $(cat "$BODY")"
"$bin" demo restart --dir "$dir" node3 >/dev/null
took=$(wait_state node3 healthy $ttl_bound) && ok "node3 restarted: healthy again ($took s)" || bad "node3 not healthy within TTL + 2 s of its restart" "$(curl -s -m 10 "$api/v1/cluster/nodes/node3/health")"
code=$(get "/v1/accounts/$n3")
[ "$code" = 200 ] && ok "node3's account answers again" || bad "node3's account after restart" "$code $(cat "$BODY")"

"$bin" demo stop --dir "$dir" agent-node2 >/dev/null
took=$(wait_state node2 down $ttl_bound) && ok "SIGSTOP agent-node2: down when its lease lapses ($took s)" || bad "node2 not down within TTL + 2 s of SIGSTOP" "$(curl -s -m 10 "$api/v1/cluster/nodes/node2/health")"
"$bin" demo cont --dir "$dir" agent-node2 >/dev/null
took=$(wait_state node2 healthy $ttl_bound) && ok "SIGCONT agent-node2: healthy ($took s)" || bad "node2 not healthy after SIGCONT" "$(curl -s -m 10 "$api/v1/cluster/nodes/node2/health")"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the health drills" || bad "ctl verify after the health drills" "$out"

# SIGTERM: the agent revokes its lease before it exits, so the heartbeat is gone by the time the
# process is (a lapse would leave it for up to the TTL); demo restart brings the agent back.
agent1=$(cluster_json "[n for n in d['nodes'] if n['id']=='node1'][0]['agent_pid']")
kill -TERM "$agent1"
agent_gone() { [ -z "$(alive "$agent1")" ] && ! kill -0 "$agent1" 2>/dev/null; }
wait_for 10 agent_gone
beat=$(etcdctl --endpoints "$endpoints" --command-timeout 5s get /shardbank/node/node1/heartbeat --print-value-only 2>&1); rc=$?
agent_gone && [ $rc -eq 0 ] && [ -z "$beat" ] && ok "SIGTERM agent-node1: exited with its heartbeat already gone (lease revoked, not left to lapse)" \
  || bad "SIGTERM agent-node1: heartbeat still there when the agent had exited (or it did not exit)" "rc $rc: $beat"
out=$("$bin" demo restart --dir "$dir" agent-node1 2>&1) && ok "demo restart agent-node1: $out" || bad "demo restart agent-node1" "$out"
took=$(wait_state node1 healthy $ttl_bound) && ok "node1 healthy again after its agent restarted ($took s)" || bad "node1 not healthy within TTL + 2 s of its agent's restart" "$(curl -s -m 10 "$api/v1/cluster/nodes/node1/health")"
