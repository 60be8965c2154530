-- wrk script of bench/http.sh: cross-node transfers through the API, each with its own Idempotency-Key.
-- Arguments (after wrk's --): ACCOUNTS-FILE RUN-ID [MIX]
--   ACCOUNTS-FILE: one line per node, the node's account ids separated by spaces
--   RUN-ID: a prefix that keeps this run's keys apart from every other run's
--   MIX: "transfers" (default: every request a transfer between two different nodes) or "tpcb"
--        (the mix of `shardbank bench`: 80 % cross-node transfers, 10 % deposits, 10 % reads)
-- Prints, after wrk's own summary, the answers by status (every non-2xx counted) and the percentiles.

local counter = 0
local nodes = {}
local run = "r"
local mix = "transfers"
local threads = {}
local thread_count = 0
answers = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local ids = {}
    for id in line:gmatch("%d+") do table.insert(ids, id) end
    if #ids > 0 then table.insert(nodes, ids) end
  end
  file:close()
  assert(#nodes >= 2, "the accounts file needs two nodes' accounts")
  run = args[2] or run
  mix = args[3] or mix
  math.randomseed(os.time() * 1000 + (thread_id or 0))
end

local function pick(ids) return ids[math.random(#ids)] end

function request()
  counter = counter + 1
  local key = run .. "-" .. (thread_id or 0) .. "-" .. counter
  local home = math.random(#nodes)
  local from = pick(nodes[home])
  local roll = mix == "tpcb" and math.random() or 0
  if roll < 0.8 then
    local other = math.random(#nodes - 1)
    if other >= home then other = other + 1 end
    return wrk.format("POST", "/v1/transfers",
      { ["Content-Type"] = "application/json", ["Idempotency-Key"] = key },
      '{"from":' .. from .. ',"to":' .. pick(nodes[other]) .. ',"amount":"0.01"}')
  elseif roll < 0.9 then
    return wrk.format("POST", "/v1/accounts/" .. from .. "/deposit",
      { ["Content-Type"] = "application/json", ["Idempotency-Key"] = key }, '{"amount":"0.01"}')
  else
    return wrk.format("GET", "/v1/accounts/" .. from)
  end
end

-- Answers by status (wrk's Lua state is per thread, shared by its connections; done() adds them up).
function response(status, headers, body)
  local label = tostring(status)
  answers[label] = (answers[label] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local a = thread:get("answers")
    for status, n in pairs(a) do total[status] = (total[status] or 0) + n end
  end
  local statuses = {}
  for status in pairs(total) do table.insert(statuses, status) end
  table.sort(statuses)
  io.write("answers by status:")
  for _, status in ipairs(statuses) do io.write(" ", status, "=", total[status]) end
  io.write("\n")
  local errors = 0
  for status, n in pairs(total) do if not status:match("^2") then errors = errors + n end end
  io.write(string.format("non-2xx: %d; socket errors: connect %d read %d write %d timeout %d\n",
    errors, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  (%.0f req/s)\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests / (summary.duration / 1e6)))
end
