/* An OpenResty-LuaJIT-shaped library: its own exports and a rolling version string. */
const char version[] = "LuaJIT 2.1.1773187200";
void lua_setexdata(void) {}
void lua_getexdata(void) {}
