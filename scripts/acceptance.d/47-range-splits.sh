#!/usr/bin/env bash
# Online range splits with the CLI and the admin route. Under 16 HTTP clients (half the transfers
# across nodes) a2 splits at its median and the new half moves to node3: no client error, `ctl
# verify` clean. Then, with no load: a `ctl split` killed -9 while relabelling is resumed; one
# killed -9 before the map changed is cancelled (the range whole again); a directory range splits;
# a serve with http.admin_routes splits a range asked over HTTP. Bad input is refused.
source "$(dirname "$0")/lib.sh"
plan 12
cluster_up

ranges() { "$bin" ctl status --config "$config" --json | json "' '.join(r['id'] + '@' + r['node'] for m in d['maps'] if m['name'] == '$1' for r in m['ranges'])"; }
job_of() { sed -n 's/^job \(job-[0-9a-f-]*\): splitting.*/\1/p' "$1" | head -1; }
new_of() { sed -n 's/.*(new range \([a-z0-9]*\)).*/\1/p' "$1" | head -1; }
sigma() { "$bin" ctl verify --config "$config" 2>&1 | sed -n 's/.*Σ balances \([0-9.]*\) = .*/\1/p'; }

run_bg "$work/load.log" "$bin" bench --config "$config" --http --clients 16 --duration 30 --cross-node 0.5 --accounts-per-node 40 \
  --acknowledged "$work/acked.txt"
loader=$bg_pid
wait_for 60 grep -q running "$work/load.log"
sleep 2
out=$("$bin" ctl split a2 --config "$config" 2>&1); st=$?
new=$(sed -n 's/.*split at .* \(a[0-9]*\) holds.*/\1/p' <<<"$out")
if [ $st -eq 0 ] && [ -n "$new" ] && ranges accounts | grep -q "$new@node2"; then
  ok "ctl split a2 at its median under load: $(grep '^job .*done' <<<"$out" | cut -c1-140)"
else
  bad "split under load" "$out"
fi
out=$("$bin" ctl move "$new" --to node3 --config "$config" 2>&1) && ranges accounts | grep -q "$new@node3" \
  && ok "the new range $new moved to node3 under load: $(grep -o 'window [0-9]* ms' <<<"$out")" || bad "move of the new range" "$out"
wait "$loader"
summary=$(grep "ledger http" "$work/load.log")
if [ -n "$summary" ] && grep -q " 0 errors" <<<"$summary"; then
  ok "no client error while a2 split and its half moved: $(sed 's/.*(\(.*\)).*/\1/' <<<"$summary")"
else
  bad "client errors during the split" "$(tail -8 "$work/load.log")"
fi
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the split and the move: $(tail -1 <<<"$out")" || bad "ctl verify after the split" "$out"
out=$(acknowledged_committed "$work/acked.txt" 2>&1) && ok "every transfer acknowledged during the split and the move is committed: $out" || bad "acknowledged transfers after the split" "$out"
before=$(sigma)

# Killed -9 while relabelling, resumed.
run_bg "$work/split-relabel.log" env SHARDBANK_TEST_MOVE_HOLD_AT=relabeling "$bin" ctl split a1 --at 5000.00 --config "$config"
splitter=$bg_pid
wait_for 60 grep -q "holding at relabeling" "$work/split-relabel.log"
kill -9 "$splitter"; wait "$splitter" 2>/dev/null
job=$(job_of "$work/split-relabel.log"); half=$(new_of "$work/split-relabel.log")
out=$("$bin" ctl jobs resume "$job" --config "$config" 2>&1) && ranges accounts | grep -q "$half@node1" \
  && ok "ctl split killed -9 while relabelling, resumed: $(grep '^job .*done' <<<"$out" | cut -c1-120)" || bad "resume of a killed split" "$out"

# Killed -9 before the map changed, cancelled.
run_bg "$work/split-publish.log" env SHARDBANK_TEST_MOVE_HOLD_AT=publishing "$bin" ctl split a3 --config "$config"
splitter=$bg_pid
wait_for 60 grep -q "holding at publishing" "$work/split-publish.log"
kill -9 "$splitter"; wait "$splitter" 2>/dev/null
job=$(job_of "$work/split-publish.log"); half=$(new_of "$work/split-publish.log")
out=$("$bin" ctl jobs cancel "$job" --config "$config" 2>&1)
rows=$(nodes_sql "SELECT COUNT(*) FROM range_ownership WHERE range_id = '$half'" | awk '{s += $1} END {print s + 0}')
[ -n "$half" ] && ! ranges accounts | grep -q "$half@" && [ "$rows" = 0 ] \
  && ok "ctl split killed -9 before publishing, cancelled: $(tail -1 <<<"$out")" || bad "cancel of a killed split ($half, ownership rows $rows)" "$out"

# A directory range.
out=$("$bin" ctl split d1 --config "$config" 2>&1) && [ "$(ranges directory | wc -w)" -ge 4 ] \
  && ok "directory range d1 split at its median hash: $(ranges directory)" || bad "directory split" "$out"

# The admin route: a serve with http.admin_routes runs the job it answers 202 for.
start_serve admin SHARDBANK_HTTP_ADMIN_ROUTES=true
code=$(post /v1/cluster/ranges/accounts/a1/split '{"at":"100.00"}' "" "$serve_url")
id=$(json "d['id']" < "$BODY" 2>/dev/null)
split_done() { get "/v1/cluster/jobs/$id" "$serve_url" >/dev/null && [ "$(json "d['phase']" < "$BODY")" = done ]; }
if [ "$code" = 202 ] && wait_for 60 split_done; then ok "POST …/a1/split answered 202 and the serve ran the job to done"; else bad "split over HTTP: $code" "$(cat "$BODY")"; fi

out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the drills: $(tail -1 <<<"$out")" || bad "ctl verify after the drills" "$out"
[ "$(sigma)" = "$before" ] && ok "Σ balances unchanged by the drills: $before" || bad "Σ balances: $before → $(sigma)"

# Bad input: nothing is written.
maps_before=$(ranges accounts)
errs=""
out=$("$bin" ctl split a1 --at 5.001 --config "$config" 2>&1) && errs+="--at 5.001 accepted; "
grep -qi "decimal" <<<"$out" || errs+="5.001: $out; "
out=$("$bin" ctl split a1 --at 20000.00 --config "$config" 2>&1) && errs+="--at outside accepted; "
grep -q "outside a1" <<<"$out" || errs+="outside: $out; "
out=$("$bin" ctl split a42 --config "$config" 2>&1) && errs+="a42 accepted; "
grep -q "known: a1" <<<"$out" || errs+="unknown: $out; "
out=$("$bin" ctl split a1 --at-hash 5 --config "$config" 2>&1) && errs+="--at-hash for accounts accepted; "
grep -q "with --at" <<<"$out" || errs+="at-hash: $out; "
[ -z "$errs" ] && [ "$(ranges accounts)" = "$maps_before" ] && ok "bad input refused with a reason, the map unchanged (more decimals, outside the range, unknown range, the other map's key)" || bad "bad input" "$errs"
