/* A program of a given shape for `layoutkit advise --prove`: code, read-only data,
 * initialised data, a .bss and a libc call, so that the linker lays out the same kinds
 * of sections as the user's program.  It is linked, measured, and never run. */
#include <stdio.h>

const char shape_message[] = "layoutkit shape";
int shape_counter = 3;
static char shape_zeroes[1 << 16];

int main(int argc, char **argv)
{
    shape_zeroes[argc & 0xff] = (char)argc;
    printf("%s %d %s\n", shape_message, shape_counter + shape_zeroes[1], argv[0]);
    return 0;
}
