#!/usr/bin/env bash
# A coordinator (a second serve) killed -9 while it holds a transfer at a two-phase-commit step. The
# demo's serve runs the in-doubt resolver and must finish the transfer; what the client was told is
# never contradicted, and a retry with the same key moves the money once.
source "$(dirname "$0")/lib.sh"
plan 9
cluster_up

code=$(post /v1/accounts '{"customer_name":"X","balance":"100.00"}'); must "open X (HTTP $code)" test "$code" = 201
x=$(json "d['account_id']" < "$BODY")
code=$(post /v1/accounts '{"customer_name":"Y","balance":"60000.00"}'); must "open Y (HTTP $code)" test "$code" = 201
y=$(json "d['account_id']" < "$BODY")
some_prepared() { local n; n=$(prepared_count) && [ "$n" -gt 0 ]; }
for step in prepared decided; do
  start_serve "drill-$step" SHARDBANK_TEST_HOLD_AT=$step
  drill=$serve_pid
  run_bg "$work/drill-$step.client" curl -s -m 30 -o "$work/drill-$step.json" -w '%{http_code}' -X POST "$serve_url/v1/transfers" \
    -H "Idempotency-Key: drill-$step" -d "{\"from\":$x,\"to\":$y,\"amount\":\"1.00\"}"
  client=$bg_pid
  wait_for 10 some_prepared
  n=$(prepared_count) && [ "$n" -gt 0 ] && ok "drill $step: $n branch(es) prepared while the coordinator holds" || bad "drill $step: no prepared branch seen" "$(nodes_sql 'XA RECOVER' 2>&1)"
  kill -9 "$drill"; wait "$drill" 2>/dev/null; wait "$client" 2>/dev/null
  told=$(cat "$work/drill-$step.client")
  start=$(date +%s)
  wait_for 30 none_prepared
  n=$(prepared_count) && [ "$n" -eq 0 ] && ok "drill $step: resolved by the other serve ($(( $(date +%s) - start )) s)" \
    || bad "drill $step: still prepared (or a node did not answer) $(( $(date +%s) - start )) s after the kill" "$(nodes_sql 'XA RECOVER' 2>&1)"
  code=$(get "/v1/transfers/drill-$step"); state=$(json "d.get('state','none')" < "$BODY" 2>/dev/null)
  want=aborted; [ $step = decided ] && want=committed
  [ "$state" = "$want" ] && { [ "$told" != 201 ] || [ "$state" = committed ]; } && ok "drill $step: transfer $state (client got HTTP $told), never contradicted" \
    || bad "drill $step: state $state, client told $told" "$code $(cat "$BODY")"
done
# The client retries the decided transfer with the same key after its timeout: exactly one transfer.
code=$(post /v1/transfers "{\"from\":$x,\"to\":$y,\"amount\":\"1.00\"}" drill-decided)
[ "$code" = 201 ] && grep -q '"replayed":true' "$BODY" && grep -q '"from_balance":"99.00"' "$BODY" \
  && ok "retry after the coordinator died: replayed, X debited once (99.00)" || bad "retry after coordinator death" "$code $(cat "$BODY")"
code=$(get "/v1/accounts/$x")
[ "$code" = 200 ] && grep -q '"balance":"99.00"' "$BODY" && ok "X holds 99.00: one transfer, not two" || bad "X balance" "$code $(cat "$BODY")"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the drills" || bad "ctl verify after the drills" "$out"
