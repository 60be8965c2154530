#!/usr/bin/env bash
# Black-box checks of the HTTP API's edge: body limits, strict JSON, account ids, unknown nodes and
# ranges, customer_name length in code points — and that none of the refused requests moved money.
#
# Sourced by the acceptance runner, or run alone:  API=http://127.0.0.1:8080 bash scripts/acceptance.d/api-edge.sh
# Needs curl and python3. Defines no functions and only variables starting with ae_, so it does not
# disturb a runner that sources it. Prints PASS/FAIL per check and "api-edge: N passed, M failed";
# the status is 1 if any check failed.

ae_passed=0
ae_failed=0
ae_tmp=$(mktemp -d /tmp/api-edge.XXXXXX)

if [ -z "${API:-}" ]; then
  echo "FAIL api-edge needs the API base URL in \$API"
  ae_failed=1
else
  ae_api=${API%/}
  ae_run=$$-$RANDOM

  # Two accounts whose balances every refused request below must leave alone.
  ae_a=""; ae_b=""
  for ae_who in a:100.00 b:200.00; do
    ae_code=$(curl -s -m 10 -o "$ae_tmp/answer" -w '%{http_code}' -X POST "$ae_api/v1/accounts" -H 'Content-Type: application/json' \
      -H "Idempotency-Key: api-edge-$ae_run-open-${ae_who%%:*}" -d "{\"customer_name\":\"api-edge ${ae_who%%:*}\",\"balance\":\"${ae_who#*:}\"}")
    ae_id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['account_id'])" "$ae_tmp/answer" 2>/dev/null)
    if [ "$ae_code" = 201 ] && [ -n "$ae_id" ]; then
      echo "PASS api-edge: open account ${ae_who%%:*} with ${ae_who#*:} → 201"; ae_passed=$((ae_passed + 1))
    else
      echo "FAIL api-edge: open account ${ae_who%%:*} → $ae_code $(head -c 300 "$ae_tmp/answer" 2>/dev/null)"; ae_failed=$((ae_failed + 1))
    fi
    if [ "${ae_who%%:*}" = a ]; then ae_a=$ae_id; else ae_b=$ae_id; fi
  done
  ae_a=${ae_a:-1}; ae_b=${ae_b:-2}

  # Bodies: written by python3 so that exact bytes (and code points) are sent.
  python3 - "$ae_tmp" "$ae_a" "$ae_b" <<'PY'
import json, sys
d, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
def put(name, data):
    open(f"{d}/{name}", "wb").write(data if isinstance(data, bytes) else data.encode("utf-8"))
put("deep.json", "[" * 100_000 + "]" * 100_000)
put("dup-transfer.json", f'{{"from":{a},"to":{b},"amount":"1.00","amount":"150.00"}}')
put("dup-deposit.json", '{"amount":"1.00","amount":"1000.00"}')
put("from-string.json", f'{{"from":"{a}","to":{b},"amount":"1.00"}}')
put("from-float.json", f'{{"from":{a}.0,"to":{b},"amount":"1.00"}}')
put("from-exponent.json", f'{{"from":{a}e0,"to":{b},"amount":"1.00"}}')
# One grapheme cluster of 256 (or 255) code points: "e" and combining acute accents.
put("name-256.json", json.dumps({"customer_name": "e" + "\u0301" * 255, "balance": "0.00"}, ensure_ascii=False))
put("name-255.json", json.dumps({"customer_name": "e" + "\u0301" * 254, "balance": "0.00"}, ensure_ascii=False))
put("name-control.json", json.dumps({"customer_name": "Ann\u0000", "balance": "0.00"}))
put("name-blank.json", json.dumps({"customer_name": " \t ", "balance": "0.00"}))
PY

  # name | method | path | body file ("big": 64 MB generated into a pipe) | status | error code ("" for none)
  ae_cases=(
    "64 MB body → 413 body_too_large|POST|/v1/accounts/$ae_a/deposit|big|413|body_too_large"
    "array nested 100,000 deep → 400 malformed_json|POST|/v1/accounts/$ae_a/deposit|deep.json|400|malformed_json"
    "duplicate amount in a transfer → 400 duplicate_field|POST|/v1/transfers|dup-transfer.json|400|duplicate_field"
    "duplicate amount in a deposit → 400 duplicate_field|POST|/v1/accounts/$ae_a/deposit|dup-deposit.json|400|duplicate_field"
    "\"from\" as a string → 422 invalid_field|POST|/v1/transfers|from-string.json|422|invalid_field"
    "\"from\" as 7.0 → 422 invalid_field|POST|/v1/transfers|from-float.json|422|invalid_field"
    "\"from\" as 7e0 → 422 invalid_field|POST|/v1/transfers|from-exponent.json|422|invalid_field"
    "?node=nosuch → 404 unknown_node|GET|/v1/accounts?node=nosuch||404|unknown_node"
    "?range=nosuch → 404 unknown_range|GET|/v1/accounts?range=nosuch||404|unknown_range"
    "customer_name of 256 code points (1 character) → 422|POST|/v1/accounts|name-256.json|422|invalid_field"
    "customer_name with a control character → 422|POST|/v1/accounts|name-control.json|422|invalid_field"
    "customer_name of only whitespace → 422|POST|/v1/accounts|name-blank.json|422|invalid_field"
    "customer_name of 255 code points → 201|POST|/v1/accounts|name-255.json|201|"
  )
  for ae_case in "${ae_cases[@]}"; do
    IFS='|' read -r ae_name ae_method ae_path ae_file ae_want ae_errcode <<<"$ae_case"
    rm -f "$ae_tmp/answer"
    if [ "$ae_file" = big ]; then
      ae_code=$(python3 -c 'import sys; o = sys.stdout.buffer; o.write(b"{\"amount\":\"1.00\",\"pad\":\""); [o.write(b"a" * 1048576) for _ in range(64)]; o.write(b"\"}")' \
        | curl -s -m 10 -o "$ae_tmp/answer" -w '%{http_code}' -X POST "$ae_api$ae_path" -H 'Content-Type: application/json' --data-binary @-)
    elif [ -n "$ae_file" ]; then
      ae_code=$(curl -s -m 10 -o "$ae_tmp/answer" -w '%{http_code}' -X "$ae_method" "$ae_api$ae_path" -H 'Content-Type: application/json' --data-binary "@$ae_tmp/$ae_file")
    else
      ae_code=$(curl -s -m 10 -o "$ae_tmp/answer" -w '%{http_code}' -X "$ae_method" "$ae_api$ae_path")
    fi
    if [ "$ae_code" = "$ae_want" ] && { [ -z "$ae_errcode" ] || grep -q "\"code\":\"$ae_errcode\"" "$ae_tmp/answer" 2>/dev/null; }; then
      echo "PASS api-edge: $ae_name"; ae_passed=$((ae_passed + 1))
    else
      echo "FAIL api-edge: $ae_name — got $ae_code $(head -c 300 "$ae_tmp/answer" 2>/dev/null)"; ae_failed=$((ae_failed + 1))
    fi
  done

  # None of the refused requests moved money.
  for ae_who in "$ae_a:100.00" "$ae_b:200.00"; do
    ae_got=$(curl -s -m 10 "$ae_api/v1/accounts/${ae_who%%:*}" | python3 -c "import json,sys; print(json.load(sys.stdin)['balance'])" 2>/dev/null)
    if [ "$ae_got" = "${ae_who#*:}" ]; then
      echo "PASS api-edge: account ${ae_who%%:*} still holds ${ae_who#*:}"; ae_passed=$((ae_passed + 1))
    else
      echo "FAIL api-edge: account ${ae_who%%:*} holds '$ae_got', not ${ae_who#*:}"; ae_failed=$((ae_failed + 1))
    fi
  done
fi

rm -rf "$ae_tmp"
echo "api-edge: $ae_passed passed, $ae_failed failed"
# Sourced: hand the status to the runner without ending it; alone: exit with it.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  [ "$ae_failed" -eq 0 ] || return 1
else
  [ "$ae_failed" -eq 0 ] || exit 1
fi
