/* A PHP-shaped ELF: execute_ex (the VM's executor) and PHP's version string. */
const char powered[] = "X-Powered-By: PHP/8.2.36";
void execute_ex(void) {}
void _start(void) {}
