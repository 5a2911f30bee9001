-- wrk script: POST a batch of 100 first-party events to /v1/events.
-- Usage: see benches/ingest/run.sh (wrk ... -s post_events.lua URL -- BODY.json)
local body_file = "/tmp/bench_body.json"
function init(args)
  if args[1] then body_file = args[1] end
  local f = assert(io.open(body_file, "r"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
  end
end
