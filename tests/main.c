/* main.c — the test runner: runs registered tests (all, or those matching argv substrings),
 * each with a fresh temporary directory, and prints the closing "N passed, N failed" line. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

typedef struct {
    const char *name, *file;
    us_test_fn fn;
} entry;

static entry tests[1024];
static int n_tests;
static char tmpdir[512];

void us_test_register(const char *name, const char *file, us_test_fn fn) {
    if (n_tests < (int)(sizeof tests / sizeof tests[0])) tests[n_tests++] = (entry){name, file, fn};
}

const char *us_test_tmpdir(void) {
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/unswag-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return tmpdir;
}

int us_test_run(const char *cmd, char *out, size_t cap) {
    char full[8192];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = 0;
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out && n + 1 < cap) {
            size_t k = r < cap - 1 - n ? r : cap - 1 - n;
            memcpy(out + n, buf, k);
            n += k;
        }
    }
    if (out && cap) out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int us_test_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

static int cmp(const void *a, const void *b) {
    const entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
    qsort(tests, (size_t)n_tests, sizeof tests[0], cmp);
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        int run = argc < 2;
        for (int a = 1; a < argc && !run; a++) run = strstr(tests[i].name, argv[a]) != NULL;
        if (!run) continue;
        tmpdir[0] = 0;
        us_test_ctx t = {0};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn(&t);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (t.failed) {
            failed++;
            printf("FAIL %-44s %8.1f ms  %s\n", tests[i].name, ms, t.msg);
        } else {
            passed++;
            printf("ok   %-44s %8.1f ms\n", tests[i].name, ms);
        }
        fflush(stdout);
        if (tmpdir[0]) {
            char cmd[600];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
            if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
