#!/usr/bin/env bash
# The HTTP API that demo up started: accounts, transfers (a transfer moves an account to another
# node's range), idempotent retries, input validation, errors; ctl verify before and after a cent is
# created behind the ledger's back.
source "$(dirname "$0")/lib.sh"
plan 19
cluster_up

code=$(post /v1/accounts '{"customer_name":"Ann O'"'"'Hara; DROP TABLE x","balance":"9999.50"}')
[ "$code" = 201 ] && grep -q '"node":"node1"' "$BODY" && ok "POST /v1/accounts → 201 on node1" || bad "POST /v1/accounts" "$code $(cat "$BODY")"
must "read Ann's account id" test "$code" = 201
ann=$(json "d['account_id']" < "$BODY")
code=$(post /v1/accounts '{"customer_name":"Bob","balance":"60000.00"}')
must "open Bob's account (HTTP $code: $(cat "$BODY"))" test "$code" = 201
bob=$(json "d['account_id']" < "$BODY")
code=$(post /v1/transfers "{\"from\":$bob,\"to\":$ann,\"amount\":\"0.51\"}" key-1)
[ "$code" = 201 ] && grep -q '"to_balance":"10000.01"' "$BODY" && ok "transfer moves Ann across to node2 (201)" || bad "transfer" "$code $(cat "$BODY")"
code=$(post /v1/transfers "{\"from\":$bob,\"to\":$ann,\"amount\":\"0.51\"}" key-1)
[ "$code" = 201 ] && grep -q '"replayed":true' "$BODY" && ok "retry with the same Idempotency-Key replays" || bad "idempotent retry" "$code $(cat "$BODY")"
code=$(get "/v1/accounts/$ann")
[ "$code" = 200 ] && grep -q '"balance":"10000.01","balance_range":"a2","customer_name":"Ann O'"'"'Hara; DROP TABLE x","node":"node2"' "$BODY" \
  && ok "GET account: moved to node2, name verbatim" || bad "GET account" "$code $(cat "$BODY")"
for pair in '{"amount":5}:422:invalid_amount' '{"amount":"1.234"}:422:invalid_amount' '{"amount":"0"}:422:invalid_amount' '{"amount":"-1"}:422:invalid_amount' '{"amount":"1e5"}:422:invalid_amount' '{"amount":"99999999999999999999.00"}:422:invalid_amount' '{"amount":"1.00"':400:malformed_json '{}:422:missing_field' '{"amount":"1.00","x":1}:422:unknown_field' '{"amount":"100000.00"}:409:insufficient_funds'; do
  body=${pair%:*:*}; rest=${pair#"$body":}; want=${rest%%:*}; errcode=${rest#*:}
  code=$(post "/v1/accounts/$ann/withdraw" "$body")
  [ "$code" = "$want" ] && grep -q "\"code\":\"$errcode\"" "$BODY" && ok "withdraw $body → $want $errcode" || bad "withdraw $body → $want" "$code $(cat "$BODY")"
done
code=$(post /v1/transfers "{\"from\":$ann,\"to\":$ann,\"amount\":\"1.00\"}")
[ "$code" = 422 ] && ok "transfer to the same account → 422" || bad "same-account transfer" "$code $(cat "$BODY")"
code=$(get /v1/accounts/987654321)
[ "$code" = 404 ] && ok "unknown account → 404" || bad "unknown account" "$code"
headers=$(curl -s -m 10 -o /dev/null -D - "$api/healthz")
grep -qi '^x-request-id:' <<<"$headers" && ok "responses carry X-Request-Id" || bad "X-Request-Id" "$headers"

out=$("$bin" ctl verify --config "$config" 2>&1) && grep -q "verify: clean" <<<"$out" && ok "ctl verify: clean after the API calls" || bad "ctl verify clean" "$out"
read -r n2port n2pw < <(cluster_json "[f\"{n['port']} {n['password']}\" for n in d['nodes'] if n['id']=='node2'][0]")
must "create a cent on node2 behind the ledger's back" mariadb -h127.0.0.1 -P"$n2port" -ubank -p"$n2pw" bank_db -e "UPDATE account_info SET balance = balance + 0.01 WHERE account_id = $ann"
out=$("$bin" ctl verify --config "$config" 2>&1) && bad "ctl verify finds a cent created behind the ledger's back" "$out" \
  || { grep -q "Σ balances" <<<"$out" && ok "ctl verify finds a cent created behind the ledger's back (exit 1)" || bad "ctl verify report" "$out"; }
must "take the cent away again" mariadb -h127.0.0.1 -P"$n2port" -ubank -p"$n2pw" bank_db -e "UPDATE account_info SET balance = balance - 0.01 WHERE account_id = $ann"
