-- wrk script for benches/cache-hit.sh (WRK_SCRIPT=lib/wrk-fresh-query.lua):
-- every request gets a query of its own, so on a cached route each one is a
-- miss that is stored, and on a plain route the same request line is sent.
-- The result line comes from wrk-done.lua, loaded from the same directory.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "wrk-done.lua")

local n = 0
local base = nil

request = function()
  if base == nil then
    base = wrk.path .. (wrk.path:find("?", 1, true) and "&" or "?") .. "miss="
      .. tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9)) .. "-"
  end
  n = n + 1
  return wrk.format(nil, base .. n)
end
