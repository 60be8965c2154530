#!/usr/bin/env bash
# Bad input is refused with a message naming the problem, and writes nothing: maps with a gap or an
# overlap, a second init, an unreachable etcd, a wrong MySQL password, malformed configuration
# files. etcd never holds a node password.
source "$(dirname "$0")/lib.sh"
plan 11
cluster_up
endpoints=$(etcd_endpoints)

dump=$(etcdctl --endpoints "$endpoints" --command-timeout 5s get --prefix /shardbank/ 2>&1); rc=$?
leak=0
for pw in $(cluster_json "' '.join(n['password'] for n in d['nodes'])"); do grep -qF "$pw" <<<"$dump" && leak=1; done
[ $rc -eq 0 ] && grep -q '/shardbank/' <<<"$dump" && [ $leak -eq 0 ] && ok "etcd holds no password from cluster.json" || bad "etcd holds no password from cluster.json" "rc $rc, leak $leak"

# Every key's last change, except the agents' heartbeats (they change every second by design).
snapshot() { etcdctl --endpoints "$endpoints" --command-timeout 5s get --prefix /shardbank/ -w json | python3 -c "
import json, sys, base64, hashlib
kvs = json.load(sys.stdin).get('kvs', [])
keys = sorted((base64.b64decode(kv['key']).decode(), kv['mod_revision']) for kv in kvs if not base64.b64decode(kv['key']).endswith(b'/heartbeat'))
assert keys, 'no key under /shardbank/'
print(len(keys), 'keys', hashlib.sha256(repr(keys).encode()).hexdigest()[:12])"; }
must "snapshot of etcd's keys before the bad input" snapshot
before=$(snapshot)

out=$("$bin" ctl init --config "$config" 2>&1) && bad "second init refuses" "$out" || { grep -q "already initialised" <<<"$out" && ok "second init refuses" || bad "second init refuses" "$out"; }

# Maps with a gap or an overlap: named, refused, nothing written.
cat > "$work/gap.json" <<'JSON'
{"name":"accounts","key":"balance_cents","version":1,"ranges":[{"id":"a1","lo":0,"hi":1000000,"node":"node1"},{"id":"a2","lo":1000001,"hi":5000001,"node":"node2"},{"id":"a3","lo":5000001,"node":"node3"}]}
JSON
cat > "$work/overlap.json" <<'JSON'
{"name":"accounts","key":"balance_cents","version":1,"ranges":[{"id":"a1","lo":0,"hi":1000002,"node":"node1"},{"id":"a2","lo":1000001,"hi":5000001,"node":"node2"},{"id":"a3","lo":5000001,"node":"node3"}]}
JSON
out=$("$bin" ctl init --force --config "$config" --accounts-map "$work/gap.json" 2>&1) && bad "gap refused" "$out" \
  || { grep -q "gap between range a1" <<<"$out" && grep -q "range a2" <<<"$out" && ok "a map with a gap is refused, naming a1 and a2" || bad "gap refused" "$out"; }
out=$("$bin" ctl init --force --config "$config" --accounts-map "$work/overlap.json" 2>&1) && bad "overlap refused" "$out" \
  || { grep -q "range a1 .* overlaps range a2" <<<"$out" && ok "a map with an overlap is refused, naming a1 and a2" || bad "overlap refused" "$out"; }

# Unreachable etcd: a clear error, not a hang (timeout's 124 would be the hang).
out=$(SHARDBANK_ETCD_ENDPOINTS=http://127.0.0.1:9 timeout 20 "$bin" ctl status --config "$config" 2>&1); rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "no etcd member answered" <<<"$out" && ok "unreachable etcd: an error naming it, no hang" || bad "unreachable etcd (exit $rc)" "$out"

# Wrong MySQL password: names the node, not the password.
echo "wrong-password-0xC0FFEE" > "$work/bad-password"
out=$(SHARDBANK_NODES_NODE2_PASSWORD_FILE="$work/bad-password" "$bin" ctl init --force --config "$config" 2>&1) && bad "wrong MySQL password refused" "$out" \
  || { grep -q "node2" <<<"$out" && ! grep -q "0xC0FFEE" <<<"$out" && ok "wrong MySQL password: error names node2, not the password" || bad "wrong MySQL password message" "$out"; }

# Malformed configuration files name the field.
echo '{"etcd": {"endpoints": "http://127.0.0.1:2379"}}' > "$work/bad1.json"
echo '{"mysql": {"pool": {"max_connections": "many"}}}' > "$work/bad2.json"
echo '{"etcd": {"endpionts": ["http://127.0.0.1:2379"]}}' > "$work/bad3.json"
for pair in "bad1:etcd.endpoints" "bad2:mysql.pool.max_connections" "bad3:etcd.endpionts"; do
  f="$work/${pair%%:*}.json"; field=${pair#*:}
  out=$("$bin" ctl status --config "$f" 2>&1) && bad "malformed config names $field" "$out" || { grep -qF "field $field" <<<"$out" && ok "malformed config names $field" || bad "malformed config names $field" "$out"; }
done
echo '{"etcd": ' > "$work/bad4.json"
out=$("$bin" ctl status --config "$work/bad4.json" 2>&1) && bad "invalid JSON refused" "$out" || { grep -q "is not valid JSON" <<<"$out" && ok "invalid JSON refused" || bad "invalid JSON refused" "$out"; }

after=$(snapshot 2>&1)
[ -n "$before" ] && [ "$before" = "$after" ] && ok "bad input wrote nothing to etcd ($before)" || bad "bad input wrote nothing to etcd ($before → $after)"
