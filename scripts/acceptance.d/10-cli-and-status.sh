#!/usr/bin/env bash
# demo up with a spare node; ctl status shows the seed's ranges, the nodes with their health and last
# heartbeat, and --json; cluster.json lists the etcd members, the spare and the agents; each agent
# keeps a leased heartbeat saying its database answers. The spare's agent waits until the spare is
# registered; registering it in etcd makes the running serve open its pool and judge it healthy, and
# its agent beat — no restart.
source "$(dirname "$0")/lib.sh"
plan 18
cluster_up --spare 1

status_all_healthy() { # every node's row says healthy with a beat some milliseconds ago
  local s; s=$("$bin" ctl status --config "$config" 2>&1) || return 1
  for n in node1 node2 node3; do grep -qE "^$n .* healthy +[0-9]+ ms ago *$" <<<"$s" || return 1; done
}
wait_for 20 status_all_healthy
status=$("$bin" ctl status --config "$config" 2>&1)
for line in "a1     0.00      10000.01  node1" "a2     10000.01  50000.01  node2" "a3     50000.01  ∞         node3"; do
  grep -qF "$line" <<<"$status" && ok "status shows: $line" || bad "status shows: $line" "$status"
done
grep -qE "^NODE +ADDRESS +DATABASE +TLS +STATE +HEALTH +LAST BEAT *$" <<<"$status" \
  && ok "status has HEALTH and LAST BEAT columns" || bad "status has HEALTH and LAST BEAT columns" "$status"
for n in node1 node2 node3; do
  grep -qE "^$n +127\.0\.0\.1:[0-9]+ +bank_db +disabled +active +healthy +[0-9]+ ms ago *$" <<<"$status" \
    && ok "status lists $n: active, healthy, last beat in ms" || bad "status lists $n: active, healthy, last beat in ms" "$status"
done
grep -q "^node4" <<<"$status" && bad "spare node4 is not in the map" "$status" || ok "spare node4 is not in the map"
python3 -c "import json,sys; d=json.load(open('$dir/cluster.json')); assert any(n['spare'] for n in d['nodes']); assert len(d['etcd']['members'])==3" \
  && ok "cluster.json lists etcd members and a spare node" || bad "cluster.json lists etcd members and a spare node"
out=$("$bin" ctl status --config "$config" --json 2>&1)
python3 -c "import json,sys; d=json.load(sys.stdin); assert [r['to'] for r in d['maps'][0]['ranges']]==['10000.01','50000.01','∞']; assert sorted(h['node'] for h in d['health'] if h['healthy'] and h['heartbeat_age_ms'] is not None)==['node1','node2','node3']" <<<"$out" \
  && ok "status --json: ranges and every node healthy with a heartbeat age" || bad "status --json" "$out"

# demo up started one agent per node, the spare's too; each keeps a leased heartbeat saying its database answers.
python3 -c "import json; d=json.load(open('$dir/cluster.json')); assert all(n.get('agent_pid') for n in d['nodes']) and any(n['spare'] for n in d['nodes'])" \
  && ok "cluster.json has agent_pid for every node, the spare's too" || bad "cluster.json has agent_pid for every node, the spare's too" "$(cat "$dir/cluster.json")"
endpoints=$(etcd_endpoints)
beat() { etcdctl --endpoints "$endpoints" --command-timeout 5s get "/shardbank/node/$1/heartbeat" --print-value-only; }
beat_ok() { beat "$1" | grep -q '"ok":true'; }
for n in node1 node2 node3; do
  wait_for 10 beat_ok "$n"
  b=$(beat "$n" 2>&1)
  grep -q '"ok":true' <<<"$b" && grep -q '"seq":' <<<"$b" && ok "agent heartbeat of $n: database ok" || bad "agent heartbeat of $n" "$b"
done

# The spare's agent runs without a heartbeat, saying it waits for node4 to be registered.
spare_agent=$(cluster_json "[n['agent_pid'] for n in d['nodes'] if n['id'] == 'node4'][0]")
waiting() { grep -q "node4 is not registered yet; waiting" "$dir/agent-node4.log"; }
wait_for 10 waiting
if kill -0 "$spare_agent" 2>/dev/null && waiting && [ -z "$(beat node4)" ]; then ok "the spare's agent waits for node4 to be registered (running, no heartbeat)"
else bad "the spare's agent waits for node4 to be registered" "$(tail -5 "$dir/agent-node4.log")"; fi

# Registering the spare (as an operator would): the running serve and the agent follow.
port4=$(cluster_json "[n['port'] for n in d['nodes'] if n['id'] == 'node4'][0]")
etcdctl --endpoints "$endpoints" --command-timeout 5s put /shardbank/node/node4/info \
  "{\"database\":\"bank_db\",\"host\":\"127.0.0.1\",\"id\":\"node4\",\"port\":$port4,\"state\":\"active\",\"tls_mode\":\"disabled\"}" >/dev/null
joined() { grep -qE "node=node4 .*node joined the registry: its pool is open" "$dir/serve.log"; }
wait_for 20 joined && ok "serve opens a pool for node4 once it is registered, without a restart" \
  || bad "serve opens a pool for node4 once it is registered" "$(grep -i node4 "$dir/serve.log" | tail -5)"
wait_for 20 beat_ok node4 && ok "the spare's agent beats once node4 is registered: database ok" \
  || bad "the spare's agent beats once node4 is registered" "$(tail -5 "$dir/agent-node4.log")"
wait_for 20 is_state node4 healthy && ok "serve judges node4 healthy" || bad "serve judges node4 healthy" "$(health node4)"
