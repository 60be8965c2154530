#!/usr/bin/env bash
# Failure drills on members, then demo down: it stops every process of the cluster — nodes, etcd
# members, agents, the demo's serve — and the serve this section started by hand is stopped by the
# section; none is left.
source "$(dirname "$0")/lib.sh"
plan 6
cluster_up

check "demo stop/cont etcd2" bash -c "'$bin' demo stop --dir '$dir' etcd2 && '$bin' demo cont --dir '$dir' etcd2"
check "demo kill + restart node1" bash -c "'$bin' demo kill --dir '$dir' node1 && '$bin' demo restart --dir '$dir' node1"
check "status after restart" "$bin" ctl status --config "$config"

start_serve extra
extra=$serve_pid
pids=$(cluster_pids)
must "cluster.json names the agents" test "$(cluster_json "len([n for n in d['nodes'] if n.get('agent_pid')])")" = 3
out=$("$bin" demo down --dir "$dir" 2>&1) && ok "demo down" || bad "demo down" "$out"
left=$(alive $pids)
[ -z "$left" ] && ok "demo down leaves none of its processes (nodes, etcd, agents, serve): $(wc -w <<<"$pids") stopped" || bad "processes left after demo down" "$left"
stop_pid "$extra"
left=$(leftovers $pids "$extra")
[ -z "$left" ] && ok "with the section's own serve stopped, nothing of the cluster runs" || bad "processes of the cluster left" "$left"
