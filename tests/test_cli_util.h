/* test_cli_util.h — helpers for tests that drive the `unswag` binary as a user would.
 *
 * The CLI under test is the one built next to the test runner (build/unswag for build/unswag_tests,
 * build-asan/unswag for the sanitizer build), found through /proc/self/exe, so `make asan` checks
 * the sanitized CLI too. cu_run() formats a shell command, runs it with stdout+stderr captured, and
 * cu_clean_exit() asserts what every failure of the CLI must look like: an exit status from the
 * program itself (1 or 2, never a signal), and no AddressSanitizer/UBSan/LeakSanitizer report.
 * cu_st_edit() rewrites a safetensors file through a callback on its parsed JSON header — the way
 * the tests forge lying headers from a good fixture — and can truncate the data block. */
#ifndef US_TEST_CLI_UTIL_H
#define US_TEST_CLI_UTIL_H

#include <cJSON.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

/* Prefix of every CLI command: one thread (the CI machine has 2 cores and tests may run beside
 * other work; spinning OpenMP threads under contention turn milliseconds into seconds). */
#define CU_ENV "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive "

/* Path of the unswag binary beside the running test binary. */
static inline const char *cu_cli(void) {
    static char path[4096];
    if (!path[0]) {
        char self[3072];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            snprintf(path, sizeof path, "build/unswag");
        } else {
            self[n] = 0;
            char *slash = strrchr(self, '/');
            if (slash) *slash = 0;
            snprintf(path, sizeof path, "%s/unswag", self);
        }
    }
    return path;
}

/* The last ~1500 characters of a captured output, for failure messages (not inlined, so the
 * compiler does not warn that a 16 KiB buffer may not fit in a 2 KiB message). */
__attribute__((noinline, unused)) static const char *cu_tail(const char *s) {
    size_t n = strlen(s);
    return n > 1500 ? s + n - 1500 : s;
}

/* Formats and runs a shell command, capturing its output into out (cap bytes). */
static inline int cu_run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int cu_run(char *out, size_t cap, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return us_test_run(cmd, out, cap);
}

/* A sanitizer report anywhere in the output (the CLI may exit 1 after one, so the code alone
 * does not tell). */
static inline int cu_sanitizer_report(const char *out) {
    return strstr(out, "Sanitizer") || strstr(out, "runtime error:") || strstr(out, "LeakSanitizer") ||
           strstr(out, "Segmentation fault") || strstr(out, "Aborted");
}

/* Reads a whole file (NUL-terminated); NULL when it cannot be read. */
static inline char *cu_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(b, 2 * cap + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        if (len) *len = n;
    }
    return b;
}

/* 1 when both files exist and hold the same bytes. */
static inline int cu_same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = cu_slurp(a, &la), *y = cu_slurp(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static inline int cu_write(const char *path, const char *text) { return us_test_write(path, text, strlen(text)); }

/* Number of entries in a directory (excluding . and ..); -1 when unreadable. */
static inline int cu_count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

typedef void (*cu_header_fn)(cJSON *header, void *arg);

/* Rewrites safetensors src into dst: the header goes through fn (may be NULL), is written back
 * with its true length, then the original data block follows, cut to keep_data bytes when
 * keep_data >= 0. Returns 0 on success. */
static inline int cu_st_edit(const char *src, const char *dst, cu_header_fn fn, void *arg, long keep_data) {
    size_t len;
    char *b = cu_slurp(src, &len);
    if (!b || len < 8) {
        free(b);
        return -1;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)b[i];
    if (hl > len - 8) {
        free(b);
        return -1;
    }
    cJSON *h = cJSON_ParseWithLength(b + 8, (size_t)hl);
    if (!h) {
        free(b);
        return -1;
    }
    if (fn) fn(h, arg);
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t jl = strlen(js), padded = (jl + 7) / 8 * 8;
    size_t data = len - 8 - (size_t)hl;
    if (keep_data >= 0 && (size_t)keep_data < data) data = (size_t)keep_data;
    size_t total = 8 + padded + data;
    char *o = malloc(total);
    for (int i = 0; i < 8; i++) o[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(o + 8, js, jl);
    memset(o + 8 + jl, ' ', padded - jl);
    memcpy(o + 8 + padded, b + 8 + hl, data);
    int r = us_test_write(dst, o, total);
    free(js);
    free(o);
    free(b);
    return r;
}

#endif
