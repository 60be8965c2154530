#!/usr/bin/env bash
# The HTTP API's edge (issue 8): body limits, strict JSON, account ids that must be JSON integers,
# unknown nodes and ranges, customer_name counted in code points — and none of the refused requests
# moves money. The checks are api-edge.sh's (which also runs alone against any serve: API=URL bash
# scripts/acceptance.d/api-edge.sh), run here against this section's own cluster.
source "$(dirname "$0")/lib.sh"
plan 17
cluster_up
while IFS= read -r line; do
  case "$line" in
    PASS\ *) ok "${line#PASS }" ;;
    FAIL\ *) bad "${line#FAIL }" ;;
  esac
done < <(API="$api" bash "$(dirname "$0")/api-edge.sh" 2>&1)
