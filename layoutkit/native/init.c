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
 *      65534, no supplementary groups) in a forked child with the environment the
 *      conf gives, stdin /dev/null, stdout and stderr captured into files, and prints
 *      one JSON block per run;
 *   4. powers the machine off.
 *
 * /layoutkit.conf is a sequence of NUL-terminated strings: the magic "layoutkit-guest-2",
 * then per program: its handshake flag ("0" or "1"), the guest path of a report file
 * it leaves ("" for none), envc (decimal) and env[0..envc-1], argc (decimal) and
 * argv[0..argc-1]; argv[0] is the program's path in the guest.
 *
 * The handshake (probe.c --handshake: the window is known only once the kernel has
 * placed the program): the child's stdin and stdout are pipes; /init relays the first
 * line the program prints to the console as a HELLO block, reads one line from the
 * console (layoutkit writes it to qemu's stdin, the serial port) and writes it to the
 * program's stdin; the rest of the program's stdout is captured as usual. The hello line
 * goes into the RUN block as "hello", the answer as "answer".
 *
 * A report file (preload.c's: the forked copy writes it while the program runs, and may
 * finish after it) is waited for up to REPORT_WAIT_NS after the program has exited,
 * reaping the orphans that end meanwhile, and goes into the RUN block as "report".
 *
 * Every block is one line between marker lines:
 *   @@LAYOUTKIT-FACTS@@ {json} @@LAYOUTKIT-END@@
 *   @@LAYOUTKIT-HELLO@@ {"index":N,"hello":"..."} @@LAYOUTKIT-END@@
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
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "lk_io.h"

#define NOBODY 65534
#define CONF_MAX (1u << 16)
#define ARGS_MAX 256
#define OUT_MAX (1u << 22)
#define LINE_MAX_ (1u << 12)
#define REPORT_WAIT_NS (60ull * 1000000000ull)

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

/* One line (without its newline, at most LINE_MAX_ - 1 bytes) read byte by byte from
 * fd; its length, or -1 when the fd ended before any newline. */
static ssize_t read_line(int fd, char *line) {
    size_t used = 0;
    for (;;) {
        char c;
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { line[used] = 0; return -1; }
        if (c == '\n') break;
        if (c != '\r' && used < LINE_MAX_ - 1) line[used++] = c;
    }
    line[used] = 0;
    return (ssize_t)used;
}

/* Copy what is left on ``from`` into ``to``. */
static void drain(int from, int to) {
    for (;;) {
        ssize_t n = read(from, captured, sizeof captured);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        for (ssize_t done = 0; done < n;) {
            ssize_t k = write(to, captured + done, (size_t)(n - done));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return;
            done += k;
        }
    }
}

/* The handshake, from /init's side: the program's hello line out to the console, the
 * caller's answer back from it. Empty strings when the program printed no line. */
static void relay(int index, int from, int to, char *hello, char *answer) {
    answer[0] = 0;
    if (read_line(from, hello) < 0) return;
    printf("@@LAYOUTKIT-HELLO@@\n{\"index\":%d,\"hello\":", index);
    json_str(hello);
    fputs("}\n@@LAYOUTKIT-END@@\n", stdout);
    fflush(stdout);
    read_line(0, answer);
    size_t n = strlen(answer);
    answer[n] = '\n';
    (void)!write(to, answer, n + 1);
    answer[n] = 0;
}

/* Wait for the report file (written as <path>.tmp, then renamed) up to REPORT_WAIT_NS,
 * reaping the orphans that end meanwhile; its fd, or -1. */
static int wait_report(const char *path) {
    uint64_t t0 = now_ns();
    for (;;) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) return fd;
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        if (now_ns() - t0 > REPORT_WAIT_NS) return -1;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

struct program {
    int handshake;
    const char *report;
    char **env, **argv;
    int argc;
};

static void run(int index, const struct program *p) {
    static char hello[LINE_MAX_], answer[LINE_MAX_];
    int out = capture_file(index, "out"), err = capture_file(index, "err");
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1};
    hello[0] = answer[0] = 0;
    if (p->handshake && (pipe2(in_pipe, O_CLOEXEC) || pipe2(out_pipe, O_CLOEXEC))) {
        printf("@@LAYOUTKIT-ERROR@@ pipe: %s\n", strerror(errno));
        return;
    }
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
        if (p->handshake) {
            dup2(in_pipe[0], 0);
            dup2(out_pipe[1], 1);
        } else {
            if (null >= 0) dup2(null, 0);
            dup2(out, 1);
        }
        dup2(err, 2);
        if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY)) {
            dprintf(2, "init: cannot drop privileges: %s\n", strerror(errno));
            _exit(126);
        }
        execve(p->argv[0], p->argv, p->env);
        dprintf(2, "init: cannot execute %s: %s\n", p->argv[0], strerror(errno));
        _exit(127);
    }
    if (p->handshake) {
        close(in_pipe[0]);
        close(out_pipe[1]);
        if (pid > 0) {
            relay(index, out_pipe[0], in_pipe[1], hello, answer);
            close(in_pipe[1]);
            drain(out_pipe[0], out);
        } else {
            close(in_pipe[1]);
        }
        close(out_pipe[0]);
    }
    int status = 0;
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    uint64_t t1 = now_ns();
    int report = p->report[0] && pid > 0 ? wait_report(p->report) : -1;
    printf("@@LAYOUTKIT-RUN@@\n{\"index\":%d,\"argv\":[", index);
    for (int i = 0; i < p->argc; i++) {
        if (i) putchar(',');
        json_str(p->argv[i]);
    }
    putchar(']');
    if (pid < 0) printf(",\"fork_errno\":%d,\"status\":null,\"signal\":null", errno);
    else if (WIFSIGNALED(status)) printf(",\"status\":null,\"signal\":%d", WTERMSIG(status));
    else printf(",\"status\":%d,\"signal\":null", WEXITSTATUS(status));
    printf(",\"pid\":%d,\"wall_ns\":%llu", pid > 0 ? (int)pid : 0,
           (unsigned long long)(t1 - t0));
    print_captured("stdout", out);
    print_captured("stderr", err);
    if (p->handshake) {
        fputs(",\"hello\":", stdout);
        json_str(hello);
        fputs(",\"answer\":", stdout);
        json_str(answer);
    }
    if (report >= 0) {
        print_captured("report", report);
        close(report);
    } else if (p->report[0]) {
        fputs(",\"report\":null", stdout);
    }
    fputs("}\n@@LAYOUTKIT-END@@\n", stdout);
    fflush(stdout);
    close(out);
    close(err);
    if (null >= 0) close(null);
}

/* The next NUL-terminated string of the conf, or NULL when it ran out. */
static const char *next_word(size_t n, size_t *at) {
    if (*at >= n) return NULL;
    const char *w = conf + *at;
    *at += strlen(w) + 1;
    return w;
}

/* ``count`` words (argc or envc, its limit ARGS_MAX) into ``into``, NULL-terminated. */
static int words(size_t n, size_t *at, char **into) {
    const char *w = next_word(n, at);
    int count = w ? atoi(w) : -1;
    if (count < 0 || count > ARGS_MAX) return -1;
    for (int i = 0; i < count; i++) {
        const char *x = next_word(n, at);
        if (!x) return -1;
        into[i] = (char *)x;
    }
    into[count] = NULL;
    return count;
}

static void programs(void) {
    size_t n = slurp("/layoutkit.conf", conf, sizeof conf), at = 0;
    static char *argv[ARGS_MAX + 1], *env[ARGS_MAX + 1];
    if (!n || strcmp(conf, "layoutkit-guest-2")) {
        puts("@@LAYOUTKIT-ERROR@@ /layoutkit.conf is missing or has no magic");
        return;
    }
    at += strlen(conf) + 1;
    for (int index = 0; at < n; index++) {
        struct program p = {0};
        const char *flag = next_word(n, &at), *report = next_word(n, &at);
        if (!flag || !report || words(n, &at, env) < 0 || (p.argc = words(n, &at, argv)) < 1) {
            printf("@@LAYOUTKIT-ERROR@@ program %d of /layoutkit.conf is truncated or has a "
                   "bad count\n", index);
            return;
        }
        p.handshake = !strcmp(flag, "1");
        p.report = report;
        p.env = env;
        p.argv = argv;
        run(index, &p);
    }
}

/* The console carries the handshake's answers: no echo of them onto the output. */
static void quiet_console(void) {
    struct termios t;
    if (tcgetattr(0, &t)) return;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    tcsetattr(0, TCSANOW, &t);
}

int main(void) {
    static char out_buf[1u << 16];
    setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf);
    klogctl(8, NULL, 1);  /* SYSLOG_ACTION_CONSOLE_LEVEL: emergencies only */
    mkdir("/proc", 0555);
    mkdir("/tmp", 01777);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
        printf("@@LAYOUTKIT-ERROR@@ mount /proc: %s\n", strerror(errno));
    quiet_console();
    facts();
    programs();
    puts("@@LAYOUTKIT-DONE@@");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
