/* appstate.c - linked next to fixtures/src/anchor.c into a static PIE by
   tests/commands/test_verify.py: 1 MiB of zero-initialised program state in .bss (as a
   real program carries: LuaJIT's static build keeps its tables there too), indexed from
   code so the linker keeps it. */
char lk_app_state[1 << 20];

char lk_app_state_at(long i) { return lk_app_state[i]; }
