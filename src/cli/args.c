/* args.c — option value parsing shared by the subcommands. */
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

bool us_arg_int(const char *flag, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "unswag: %s %s: expected an integer in [%ld, %ld]\n", flag, v, lo, hi);
        return false;
    }
    *out = (int)x;
    return true;
}

bool us_arg_u64(const char *flag, const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || *v == '-') {
        fprintf(stderr, "unswag: %s %s: expected a non-negative integer\n", flag, v);
        return false;
    }
    *out = x;
    return true;
}

bool us_arg_double(const char *flag, const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "unswag: %s %s: expected a number\n", flag, v);
        return false;
    }
    *out = x;
    return true;
}

const char *us_arg_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "unswag: %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}
