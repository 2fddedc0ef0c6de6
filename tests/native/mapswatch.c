/* layoutkit mapswatch: run a program and print its /proc/PID/maps at a marker line.
 *
 * Plain C11, built static for the guest's arch by tests/native/test_guest_luajit.py and run
 * by the guest's /init like any program:
 *
 *   mapswatch MARKER PROGRAM [ARG...]
 *
 * PROGRAM runs in a forked child (same uid) with its stdout and stdin on pipes and its
 * stderr inherited. Every line the child writes is copied to mapswatch's stdout. When a
 * line equals MARKER, mapswatch prints the child's /proc/PID/maps between the lines
 *   @@LAYOUTKIT-MAPS@@
 *   @@LAYOUTKIT-MAPS-END@@
 * and only then closes the child's stdin: a program that reads stdin to its end after
 * the marker (fixtures/src/jit-heavy.lua) is still alive, its mappings intact, while
 * its maps are read. mapswatch exits with the child's status (128 + signal when killed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void print_maps(pid_t pid) {
    char path[64], buf[1 << 14];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    fputs("@@LAYOUTKIT-MAPS@@\n", stdout);
    if (fd < 0) {
        fprintf(stderr, "mapswatch: %s: %s\n", path, strerror(errno));
    } else {
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
            if (n > 0) fwrite(buf, 1, (size_t)n, stdout);
        close(fd);
    }
    fputs("@@LAYOUTKIT-MAPS-END@@\n", stdout);
    fflush(stdout);
}

int main(int argc, char **argv) {
    int out[2], in[2];
    if (argc < 3) {
        fputs("usage: mapswatch MARKER PROGRAM [ARG...]\n", stderr);
        return 2;
    }
    if (pipe2(out, O_CLOEXEC) || pipe2(in, O_CLOEXEC)) {
        fprintf(stderr, "mapswatch: pipe: %s\n", strerror(errno));
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "mapswatch: fork: %s\n", strerror(errno));
        return 2;
    }
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(argv[2], argv + 2);
        fprintf(stderr, "mapswatch: cannot execute %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    FILE *child = fdopen(out[0], "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int seen = 0;
    size_t marker = strlen(argv[1]);
    while (child && (len = getline(&line, &cap, child)) >= 0) {
        fwrite(line, 1, (size_t)len, stdout);
        if (!seen && (size_t)len >= marker && !strncmp(line, argv[1], marker) &&
            (line[marker] == '\n' || line[marker] == 0)) {
            seen = 1;
            fflush(stdout);
            print_maps(pid);
            close(in[1]);
        }
    }
    if (!seen) close(in[1]);
    free(line);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    fflush(stdout);
    if (!seen) fprintf(stderr, "mapswatch: %s never printed %s\n", argv[2], argv[1]);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return seen ? WEXITSTATUS(status) : 3;
}
