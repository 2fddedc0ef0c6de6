/* Relinked by tests/advice/test_v8_pad.py with -Tbss: a non-PIE program with a .bss of
   123457 bytes (not a multiple of anything) and some data before it. */
#include <stdio.h>

char big[123457];
int data_v = 5;

int main(void)
{
    big[7] = (char)data_v;
    printf("%d\n", big[7]);
    return 0;
}
