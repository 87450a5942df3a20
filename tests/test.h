/* test.h — a small test harness. TEST(name) { ... } registers a test; CHECK(cond, fmt, ...)
 * fails it with a message and returns. The runner (tests/main.c) runs every test, or those whose
 * name contains one of the command-line arguments, and ends with "N passed, N failed". */
#ifndef US_TEST_H
#define US_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct us_test_ctx {
    int failed;
    char msg[2048];
} us_test_ctx;

typedef void (*us_test_fn)(us_test_ctx *t);
void us_test_register(const char *name, const char *file, us_test_fn fn);

#define TEST(name)                                                                   \
    static void test_##name(us_test_ctx *t);                                         \
    __attribute__((constructor)) static void register_##name(void) {                \
        us_test_register(#name, __FILE__, test_##name);                              \
    }                                                                                \
    static void test_##name(us_test_ctx *t)

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            char m_[1536]; /* failure messages may be cut: that is fine */          \
            _Pragma("GCC diagnostic push")                                           \
            _Pragma("GCC diagnostic ignored \"-Wformat-truncation\"")                 \
            snprintf(m_, sizeof m_, __VA_ARGS__);                                    \
            snprintf(t->msg, sizeof t->msg, "%s:%d: CHECK(%s) %s", __FILE__, __LINE__, #cond, m_); \
            _Pragma("GCC diagnostic pop")                                            \
            t->failed = 1;                                                           \
            return;                                                                  \
        }                                                                            \
    } while (0)

/* Relative closeness: |a-b| <= tol * max(|a|, |b|, floor). */
static inline int us_close(double a, double b, double tol, double floor_) {
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    if (m < floor_) m = floor_;
    return fabs(a - b) <= tol * m;
}

/* Directory of the committed fixtures, relative to the repository root (tests run from there). */
#define FIXTURES "tests/fixtures"

/* A fresh empty temporary directory (mkdtemp under $TMPDIR or /tmp); removed by the runner. */
const char *us_test_tmpdir(void);
/* Runs a shell command, capturing stdout+stderr into out (may be NULL); returns the exit status. */
int us_test_run(const char *cmd, char *out, size_t cap);
/* Writes bytes to path; returns 0 on success. */
int us_test_write(const char *path, const void *data, size_t len);

#endif
