/* layoutkit guest /init: the first and only process of a throw-away qemu-system guest.
 *
 * Plain C11, built static for the guest's arch by layoutkit/native/guest/boot.py and put
 * into the initramfs as /init (booted with rdinit=/init). It:
 *   1. turns the kernel's console messages off (klogctl), so that nothing interleaves
 *      with what it prints, and mounts /proc;
 *   2. prints the kernel facts: release, machine, the address of a local on its stack
 *      (the caller reads the VA bits from it), page size, vm.mmap_min_addr,
 *      kernel.randomize_va_space and vm.mmap_rnd_bits;
 *   3. runs every program listed in /layoutkit.conf as an unprivileged user (uid and gid
 *      65534, no supplementary groups) in a forked child, stdin /dev/null, stdout and
 *      stderr captured into files, and prints one JSON block per run;
 *   4. powers the machine off.
 *
 * /layoutkit.conf is a sequence of NUL-terminated strings: the magic "layoutkit-guest-1",
 * then per program its argc (decimal) and argv[0..argc-1]; argv[0] is the program's
 * path in the guest.
 *
 * Every block is one line between marker lines:
 *   @@LAYOUTKIT-FACTS@@ {json} @@LAYOUTKIT-END@@
 *   @@LAYOUTKIT-RUN@@   {json} @@LAYOUTKIT-END@@
 *   @@LAYOUTKIT-DONE@@
 * JSON strings carry every byte outside printable ASCII as \u00XX (one escape per
 * byte: the reader gets the bytes back with latin-1), so the console cannot mangle them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lk_io.h"

#define NOBODY 65534
#define CONF_MAX (1u << 16)
#define ARGS_MAX 256
#define OUT_MAX (1u << 22)

static char conf[CONF_MAX];
static char captured[OUT_MAX];

static void json_bytes(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void json_str(const char *s) { json_bytes(s, strlen(s)); }

/* A /proc/sys value as a JSON number, or null when the file does not exist. */
static void json_sysctl(const char *key, const char *path) {
    char buf[64];
    printf(",\"%s\":", key);
    if (slurp(path, buf, sizeof buf)) printf("%lld", strtoll(buf, NULL, 10));
    else fputs("null", stdout);
}

static void facts(void) {
    struct utsname u;
    volatile int local = 0;
    uname(&u);
    fputs("@@LAYOUTKIT-FACTS@@\n{\"release\":", stdout);
    json_str(u.release);
    fputs(",\"version\":", stdout);
    json_str(u.version);
    fputs(",\"machine\":", stdout);
    json_str(u.machine);
    printf(",\"stack\":\"%#llx\",\"page_size\":%ld",
           (unsigned long long)(uintptr_t)&local, sysconf(_SC_PAGESIZE));
    json_sysctl("mmap_min_addr", "/proc/sys/vm/mmap_min_addr");
    json_sysctl("randomize_va_space", "/proc/sys/kernel/randomize_va_space");
    json_sysctl("mmap_rnd_bits", "/proc/sys/vm/mmap_rnd_bits");
    printf(",\"uptime_ns\":%llu}\n@@LAYOUTKIT-END@@\n", (unsigned long long)now_ns());
    fflush(stdout);
}

static int capture_file(int index, const char *what) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/%d.%s", index, what);
    return open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

/* The captured output (its first 4 MiB) and its whole size: a reader that gets fewer
 * bytes than the size knows it was cut. */
static void print_captured(const char *key, int fd) {
    struct stat st;
    ssize_t n = pread(fd, captured, sizeof captured, 0);
    if (n < 0) n = 0;
    if (fstat(fd, &st)) st.st_size = n;
    printf(",\"%s\":", key);
    json_bytes(captured, (size_t)n);
    printf(",\"%s_bytes\":%lld", key, (long long)st.st_size);
}

static void run(int index, int argc, char **argv) {
    int out = capture_file(index, "out"), err = capture_file(index, "err");
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
        if (null >= 0) dup2(null, 0);
        dup2(out, 1);
        dup2(err, 2);
        if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY)) {
            dprintf(2, "init: cannot drop privileges: %s\n", strerror(errno));
            _exit(126);
        }
        execv(argv[0], argv);
        dprintf(2, "init: cannot execute %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    uint64_t t1 = now_ns();
    printf("@@LAYOUTKIT-RUN@@\n{\"index\":%d,\"argv\":[", index);
    for (int i = 0; i < argc; i++) {
        if (i) putchar(',');
        json_str(argv[i]);
    }
    putchar(']');
    if (pid < 0) printf(",\"fork_errno\":%d,\"status\":null,\"signal\":null", errno);
    else if (WIFSIGNALED(status)) printf(",\"status\":null,\"signal\":%d", WTERMSIG(status));
    else printf(",\"status\":%d,\"signal\":null", WEXITSTATUS(status));
    printf(",\"wall_ns\":%llu", (unsigned long long)(t1 - t0));
    print_captured("stdout", out);
    print_captured("stderr", err);
    fputs("}\n@@LAYOUTKIT-END@@\n", stdout);
    fflush(stdout);
    close(out);
    close(err);
    if (null >= 0) close(null);
}

static void programs(void) {
    size_t n = slurp("/layoutkit.conf", conf, sizeof conf), at = 0;
    char *argv[ARGS_MAX + 1];
    if (!n || strcmp(conf, "layoutkit-guest-1")) {
        puts("@@LAYOUTKIT-ERROR@@ /layoutkit.conf is missing or has no magic");
        return;
    }
    at += strlen(conf) + 1;
    for (int index = 0; at < n; index++) {
        int argc = atoi(conf + at);
        at += strlen(conf + at) + 1;
        if (argc < 1 || argc > ARGS_MAX) {
            printf("@@LAYOUTKIT-ERROR@@ bad argc %d in /layoutkit.conf\n", argc);
            return;
        }
        for (int i = 0; i < argc; i++) {
            if (at >= n) {
                puts("@@LAYOUTKIT-ERROR@@ /layoutkit.conf is truncated");
                return;
            }
            argv[i] = conf + at;
            at += strlen(conf + at) + 1;
        }
        argv[argc] = NULL;
        run(index, argc, argv);
    }
}

int main(void) {
    static char out_buf[1u << 16];
    setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf);
    klogctl(8, NULL, 1);  /* SYSLOG_ACTION_CONSOLE_LEVEL: emergencies only */
    mkdir("/proc", 0555);
    mkdir("/tmp", 01777);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
        printf("@@LAYOUTKIT-ERROR@@ mount /proc: %s\n", strerror(errno));
    facts();
    programs();
    puts("@@LAYOUTKIT-DONE@@");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
