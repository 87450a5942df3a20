/* common.c — errors, dtype conversions, checked allocation, files and counter-based RNG. */
#include "core/common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

us_status us_fail(us_err *e, us_status st, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

const char *us_status_name(us_status st) {
    static const char *names[] = {"ok", "I/O error", "format error", "unsupported", "invalid argument",
                                  "out of memory", "device error", "interrupted"};
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "unknown error";
}

const char *us_version_string(void) {
    static char buf[128];
    snprintf(buf, sizeof buf, "%s (backends: %s)", UNSWAG_VERSION, us_backends_compiled());
    return buf;
}

static const struct {
    const char *name;
    size_t size;
} dtypes[US_DT_COUNT] = {
    [US_DT_F32] = {"F32", 4}, [US_DT_BF16] = {"BF16", 2}, [US_DT_F16] = {"F16", 2}, [US_DT_F64] = {"F64", 8},
    [US_DT_I64] = {"I64", 8}, [US_DT_I32] = {"I32", 4},   [US_DT_I16] = {"I16", 2}, [US_DT_I8] = {"I8", 1},
    [US_DT_U8] = {"U8", 1},   [US_DT_BOOL] = {"BOOL", 1},
};

size_t us_dtype_size(us_dtype dt) { return (unsigned)dt < US_DT_COUNT ? dtypes[dt].size : 0; }
const char *us_dtype_name(us_dtype dt) { return (unsigned)dt < US_DT_COUNT ? dtypes[dt].name : "?"; }

bool us_dtype_from_name(const char *name, us_dtype *out) {
    for (int i = 0; i < US_DT_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (us_dtype)i;
            return true;
        }
    return false;
}

float us_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t us_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float us_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t us_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow (rounds to inf) */
    if (a < 0x38800000u) {                                   /* subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        uint32_t m = (uint32_t)nearbyintf(af * 16777216.0f); /* units of 2^-24, round to even */
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - ((uint32_t)(127 - 15) << 23);
    return (uint16_t)(sign | (r >> 13));
}

bool us_convert_to_f32(float *dst, const void *src, us_dtype dt, size_t n) {
    switch (dt) {
    case US_DT_F32:
        memcpy(dst, src, n * 4);
        return true;
    case US_DT_BF16: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = us_bf16_to_f32(h);
        }
        return true;
    }
    case US_DT_F16: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = us_f16_to_f32(h);
        }
        return true;
    }
    case US_DT_F64: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            dst[i] = (float)d;
        }
        return true;
    }
    default:
        return false;
    }
}

void *us_malloc(size_t bytes, us_err *e, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) us_fail(e, US_ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *us_calloc(size_t n, size_t size, us_err *e, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) us_fail(e, US_ENOMEM, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

void *us_aligned_alloc(size_t bytes, us_err *e, const char *what) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        us_fail(e, US_ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

us_status us_read_file(const char *path, char **data, size_t *len, us_err *e) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return us_fail(e, US_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return us_fail(e, US_ENOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return us_fail(e, US_EIO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return US_OK;
}

bool us_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int n = (dl && dir[dl - 1] == '/') ? snprintf(out, cap, "%s%s", dir, name) : snprintf(out, cap, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < cap;
}

uint64_t us_hash64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

float us_rand_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    uint64_t h = us_hash64(us_hash64(seed ^ us_hash64(stream)) + i);
    return (float)((h >> 40) * (1.0 / 16777216.0));
}

float us_rand_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    /* Box-Muller from two uniforms of the same index; the (0,1] shift keeps log finite. */
    uint64_t h = us_hash64(us_hash64(seed ^ us_hash64(stream)) + i);
    double u1 = ((double)(h >> 40) + 1.0) / 16777217.0;
    double u2 = (double)(h & 0xffffffu) / 16777216.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
