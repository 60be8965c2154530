#!/usr/bin/env bash
# Exactly once through two real serves (issue 8's drills): a second serve holds a transfer at a
# two-phase-commit step and is killed -9; the same request with the same Idempotency-Key goes to the
# demo's serve at once. Case 1: the first attempt's decision was committed — the retry must not undo
# its branch (money moves once). Case 2: a later attempt's prepared branch must never be committed
# under the first attempt's decision (no money created). Case 4: an attempt the resolver recorded as
# aborted must not spend its key — the retry the 503 promised succeeds. Cases 1 and 4 with the
# participant's node below and above the commit point's; case 2 below only (above, the commit point
# is visited first and its own posting collides before any participant branch exists).
source "$(dirname "$0")/lib.sh"
plan 26
cluster_up

some_prepared() { local n; n=$(prepared_count) && [ "$n" -gt 0 ]; }
balance() { get "/v1/accounts/$1" >/dev/null && json "d['balance']" < "$BODY"; }
open_account() { # name balance → prints the id
  local code; code=$(post /v1/accounts "{\"customer_name\":\"$1\",\"balance\":\"$2\"}")
  must "open $1 with $2 (HTTP $code)" test "$code" = 201
  json "d['account_id']" < "$BODY"
}
cents() { python3 -c "from decimal import Decimal; print(int(Decimal('$1') * 100))"; }
# Sends the transfer to a held serve in the background and waits until a branch is prepared.
send_held() { # serve-url key from to
  run_bg "$work/held-$2.code" curl -s -m 90 -o "$work/held-$2.json" -w '%{http_code}' -X POST "$1/v1/transfers" \
    -H "Idempotency-Key: $2" -d "{\"from\":$3,\"to\":$4,\"amount\":\"1.00\"}"
  wait_for 20 some_prepared
}
# Posts to the demo's serve until it answers something other than 503 (as a client obeying
# Retry-After would), for at most 40 s; prints the last status.
post_until_final() { # path body key
  local code i
  for i in $(seq 80); do
    code=$(post "$1" "$2" "$3")
    [ "$code" != 503 ] && break
    sleep 0.5
  done
  echo "$code"
}
warm() { # serve-url ids… — the serve reads each account, so it knows where they are (the lock-first path)
  local url=$1 id; shift
  for id in "$@"; do curl -s -m 10 -o /dev/null "$url/v1/accounts/$id"; done
}
# Opens home and other, starts a serve that holds transfers at STEP, sends it the transfer with KEY
# and checks that a branch is prepared; sets $home, $other and $held (the holding serve's pid).
held_transfer() { # label step key home-balance other-balance
  home=$(open_account "Home-$1" "$4"); other=$(open_account "Other-$1" "$5")
  start_serve "$3" SHARDBANK_TEST_HOLD_AT="$2"
  held=$serve_pid
  warm "$serve_url" "$home" "$other"; warm "$api" "$home" "$other"
  if send_held "$serve_url" "$3" "$home" "$other"; then ok "$1: a branch is prepared while the coordinator holds at $2"
  else bad "$1: no branch prepared" "$(nodes_sql 'XA RECOVER' 2>&1)"; fi
}

for side in below above; do
  # below: home (debited, the commit point) on node2, the other on node1; above: home node1, other node2.
  if [ $side = below ]; then h0=20000.00; o0=100.00; else h0=500.00; o0=20000.00; fi

  # Case 1: the held serve's decision is committed when it dies.
  held_transfer "case 1 ($side)" decided "K1-$side" $h0 $o0
  kill -9 "$held"; wait "$held" 2>/dev/null
  code=$(post_until_final /v1/transfers "{\"from\":$home,\"to\":$other,\"amount\":\"1.00\"}" "K1-$side")
  [ "$code" = 201 ] && grep -q '"replayed":true' "$BODY" && ok "case 1 ($side): the same request to the other serve answers 201 replayed" \
    || bad "case 1 ($side): retry answered $code" "$(cat "$BODY")"
  wait_for 30 none_prepared && ok "case 1 ($side): nothing left prepared" || bad "case 1 ($side): still prepared" "$(nodes_sql 'XA RECOVER' 2>&1)"
  h=$(balance "$home"); o=$(balance "$other")
  [ "$(cents "$h")" = $(( $(cents $h0) - 100 )) ] && [ "$(cents "$o")" = $(( $(cents $o0) + 100 )) ] \
    && ok "case 1 ($side): money moved once ($h0 → $h, $o0 → $o)" || bad "case 1 ($side): balances $h and $o (from $h0 and $o0)"

  # Case 4: the held serve dies after the prepare, before any decision: the resolver records its
  # attempt aborted; the key is not spent.
  held_transfer "case 4 ($side)" prepared "K4-$side" $h0 $o0
  if [ $side = below ]; then
    # An operator's view of the same moment: the branch, its attempt and that no decision exists yet.
    out=$("$bin" ctl xa list --config "$config" 2>&1)
    grep -q "K4-$side" <<<"$out" && grep -q "none yet" <<<"$out" && ok "ctl xa list shows the held branch with no decision yet" || bad "ctl xa list" "$out"
  fi
  kill -9 "$held"; wait "$held" 2>/dev/null
  if [ $side = above ]; then
    # An operator finishes it by hand, racing the automatic resolvers: either way it ends, from the decision.
    out=$("$bin" ctl xa resolve --config "$config" --all --min-age 0 2>&1)
    [ $? -eq 0 ] && ok "ctl xa resolve --all finishes the dead coordinator's branch: $(tail -1 <<<"$out")" || bad "ctl xa resolve" "$out"
  fi
  wait_for 30 none_prepared && ok "case 4 ($side): nothing left prepared" || bad "case 4 ($side): still prepared" "$(nodes_sql 'XA RECOVER' 2>&1)"
  code=$(get "/v1/transfers/K4-$side"); state=$(json "d.get('state')" < "$BODY" 2>/dev/null)
  [ "$state" = aborted ] && ok "case 4 ($side): the attempt is recorded aborted" || bad "case 4 ($side): state $state" "$code $(cat "$BODY")"
  code=$(post_until_final /v1/transfers "{\"from\":$home,\"to\":$other,\"amount\":\"1.00\"}" "K4-$side")
  [ "$code" = 201 ] && grep -q '"replayed":false' "$BODY" && ok "case 4 ($side): the retry with the same key commits (201, not a replay)" \
    || bad "case 4 ($side): retry answered $code" "$(cat "$BODY")"
  code=$(post /v1/transfers "{\"from\":$home,\"to\":$other,\"amount\":\"1.00\"}" "K4-$side")
  h=$(balance "$home"); o=$(balance "$other")
  [ "$code" = 201 ] && [ "$(cents "$h")" = $(( $(cents $h0) - 100 )) ] && [ "$(cents "$o")" = $(( $(cents $o0) + 100 )) ] \
    && ok "case 4 ($side): a further retry replays; money moved once ($h, $o)" || bad "case 4 ($side): $code, balances $h and $o"
done

# Case 2: the first attempt commits through the demo's serve; the other account then moves to
# node1, below the home's node3; a second attempt with the same key, on a held serve, prepares a
# branch on node1 (where the first left no posting) and dies.
home=$(open_account "Home2" 60000.00); other=$(open_account "Other2" 20000.00)
code=$(post /v1/transfers "{\"from\":$home,\"to\":$other,\"amount\":\"1.00\"}" K2)
must "first attempt of K2 (HTTP $code)" test "$code" = 201
code=$(post "/v1/accounts/$other/withdraw" '{"amount":"15000.00"}' move-other)
must "withdrawal moving the other account to node1 (HTTP $code)" test "$code" = 200
h_before=$(balance "$home"); o_before=$(balance "$other")
start_serve c2 SHARDBANK_TEST_HOLD_AT=prepared
held=$serve_pid
warm "$serve_url" "$home" "$other"
if send_held "$serve_url" K2 "$home" "$other"; then ok "case 2: the later attempt's branch is prepared while its coordinator holds"
else bad "case 2: no branch prepared" "$(nodes_sql 'XA RECOVER' 2>&1)"; fi
kill -9 "$held"; wait "$held" 2>/dev/null
wait_for 30 none_prepared && ok "case 2: nothing left prepared" || bad "case 2: still prepared" "$(nodes_sql 'XA RECOVER' 2>&1)"
h=$(balance "$home"); o=$(balance "$other")
[ "$h" = "$h_before" ] && [ "$o" = "$o_before" ] && ok "case 2: the later attempt's branch was rolled back (no money created: $o)" \
  || bad "case 2: balances $h and $o, before $h_before and $o_before"
code=$(post /v1/transfers "{\"from\":$home,\"to\":$other,\"amount\":\"1.00\"}" K2)
[ "$code" = 201 ] && grep -q '"replayed":true' "$BODY" && ok "case 2: the key still replays the first attempt" || bad "case 2: retry answered $code" "$(cat "$BODY")"

out=$("$bin" ctl xa list --config "$config" 2>&1)
grep -q "no prepared ShardBank branch" <<<"$out" && ok "ctl xa list: nothing prepared at the end" || bad "ctl xa list at the end" "$out"
out=$("$bin" ctl verify --config "$config" 2>&1) && ok "ctl verify clean after the drills: $(tail -1 <<<"$out")" || bad "ctl verify after the drills" "$out"
