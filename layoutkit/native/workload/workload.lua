-- layoutkit workload: one lua_State's driver (run by workload.c in its own thread).
--
-- Arguments: statements per generated function, retries, attempts, sizemcode and
-- maxmcode (KiB). Compiles one big trace per generated function (a 4-iteration loop of
-- `statements` lines of floating-point arithmetic: about one mcode area of code) until
-- the state holds maxmcode / sizemcode areas (its whole allotment), or has seen more than
-- `retries` allocation aborts, or has run `attempts` functions.
--
-- Trace events come from jit.attach (LuaJIT doc/ext_jit.html; the "abort" event passes
-- the error code, an index into jit.vmdef.traceerr, src/lj_traceerr.h). An abort with
-- LJ_TRERR_MCODEAL, "failed to allocate mcode memory", has two causes
-- (src/lj_mcode.c): mcode_alloc found no area in range, or lj_mcode_limiterr saw that
-- one more area would pass maxmcode. The event is sent before the flush
-- (src/lj_trace.c: trace_abort sends it, then calls lj_trace_flushall for MCODEAL), so
-- workload_areas(), the areas this thread holds, tells the two apart.
local statements, retries, attempts, sizemcode, maxmcode = ...
local allotment = math.floor(maxmcode / sizemcode)

-- The driver itself is never compiled (PROTO_NOJIT on this chunk and every function in
-- it, doc/ext_jit.html jit.off(true, true)): only the big traces ask for mcode, one area
-- each. Compiled, the driver's own small loops took space in the first area and, after
-- a flush, were recompiled, asked for an area and aborted themselves: MCODEAL aborts
-- that no big trace caused (seen under qemu-user with jit.attach: a state's second
-- abort came from the driver's loop, recorded right after the first flush).
jit.off(true, true)

-- Loop optimisation off keeps one copy of the body per trace; the record limits are
-- raised so that a whole body fits one trace; hotloop=1 records the loop on its second
-- iteration instead of its 56th (src/lj_jit.h JIT_P_hotloop: interpreting the big body
-- 56 times is most of the run time under TCG). None of these touch mcode placement.
jit.opt.start("-loop", "hotloop=1", "maxrecord=30000", "maxirconst=8000", "maxsnap=8000",
              "sizemcode=" .. sizemcode, "maxmcode=" .. maxmcode)

local traceerr = require("jit.vmdef").traceerr
local MCODEAL
for code, message in pairs(traceerr) do
  if message == "failed to allocate mcode memory" then MCODEAL = code end
end
assert(MCODEAL, "jit.vmdef.traceerr has no 'failed to allocate mcode memory'")

local counts = {traces = 0, alloc_aborts = 0, limit_aborts = 0, other_aborts = 0,
                flushes = 0, compiles = 0}
local others = {}  -- the other aborts' messages, counted

local function on_trace(what, _, _, _, code)
  if what == "stop" then
    counts.traces = counts.traces + 1
  elseif what == "flush" then
    counts.flushes = counts.flushes + 1
  elseif what == "abort" then
    if code ~= MCODEAL then
      counts.other_aborts = counts.other_aborts + 1
      local why = traceerr[code] or tostring(code)
      others[why] = (others[why] or 0) + 1
    elseif (workload_areas() + 1) * sizemcode > maxmcode then
      counts.limit_aborts = counts.limit_aborts + 1
    else
      counts.alloc_aborts = counts.alloc_aborts + 1
    end
  end
end
jit.attach(on_trace, "trace")

local lines = {"local x = ...", "local a, b, c, d = x, x + 1, x + 2, x + 3",
               "for i = 1, 4 do"}
for j = 1, statements do
  lines[#lines + 1] = ("  a = b * %d.25 + c; b = c - d * %d.5; c = d + a; d = a * b")
    :format(j % 16, j % 16 + 1)
end
lines[#lines + 1] = "end"
lines[#lines + 1] = "return a + b + c + d"
-- Parsed once; each run loads the bytecode again (much quicker than parsing).
local bytecode = string.dump(assert(loadstring(table.concat(lines, "\n"), "=big")))

while workload_areas() < allotment and counts.alloc_aborts <= retries
      and counts.compiles < attempts do
  counts.compiles = counts.compiles + 1
  -- Every hot counter back to hotloop (src/lib_jit.c jitopt_param calls
  -- lj_dispatch_init_hotcount for "hotloop"): the new loop records on its second
  -- iteration whatever an earlier abort did. Without it, trace_abort's penalty_pc
  -- (src/lj_trace.c: 72 and more for the slot of the aborted loop, never reset by
  -- lj_trace_flushall) left the counters of later prototypes that share a slot high:
  -- a state waited tens of calls after an abort, then mostly started recording on the
  -- loop's last iteration ("leaving loop in root trace") and hit the attempts cap
  -- before it asked again. With the reset, each call is one trace and one mcode
  -- request, as a program whose hot code stays hot asks again after a flush.
  jit.opt.start("hotloop=1")
  -- A new prototype each time: a new root trace. It is not kept: a collected
  -- prototype's trace is freed, its machine code stays in the area until a flush.
  assert(loadstring(bytecode, "=big"))(0.5)
  -- Free the dead prototype and its trace (IR and snapshots: a few hundred KiB) now, not
  -- when the GC's pace gets there: 128 states in the guest's 1 GiB otherwise run out.
  collectgarbage()
end
jit.attach(on_trace)  -- detach
local reasons = {}
for why, n in pairs(others) do reasons[#reasons + 1] = ("%s: %d"):format(why, n) end
table.sort(reasons)
counts.other_reasons = table.concat(reasons, "; ")
return counts
