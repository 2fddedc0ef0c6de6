/* An opcache.so-shaped library: zend_extension_entry and the Zend extension API string. */
const char api[] = "API420220829,NTS";
int zend_extension_entry;
void zend_extension_startup(void) {}
