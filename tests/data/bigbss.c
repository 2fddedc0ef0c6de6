/* bigbss.c - linked next to fixtures/src/anchor.c by tests/test_advise.py: 128 MiB of
   zero-initialised data in .bss, indexed from code. On x86-64, gcc -fno-pie compiles
   `array[i]` to `movzbl array(%rdi)`, whose R_X86_64_32S relocation only reaches
   addresses below 2 GiB: a non-PIE link fails ("relocation truncated to fit") when
   .bss extends past 2 GiB. */
char lk_bss_a[64 << 20];
char lk_bss_b[64 << 20];

char lk_bss_a_at(long i) { return lk_bss_a[i]; }
char lk_bss_b_at(long i) { return lk_bss_b[i]; }
