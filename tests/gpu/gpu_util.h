/* gpu_util.h — helpers for the GPU tests: a cpu + cuda backend pair, bf16-rounded random inputs
 * uploaded to both, poisoned outputs, and relative L2 errors of GPU results against the CPU
 * backend (whose "device" pointers are host pointers, so its outputs are read directly). */
#ifndef US_GPU_UTIL_H
#define US_GPU_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "../test.h"

typedef struct gpair {
    us_backend *c, *g;
    us_err err;
} gpair;

static inline int gpair_open(gpair *p) {
    memset(p, 0, sizeof *p);
    if (us_backend_create("cpu", 4, &p->c, &p->err) != US_OK) return -1;
    if (us_backend_create("cuda", 0, &p->g, &p->err) != US_OK) {
        p->c->destroy(p->c);
        p->c = NULL;
        return -1;
    }
    return 0;
}

static inline void gpair_close(gpair *p) {
    if (p->g) p->g->destroy(p->g);
    if (p->c) p->c->destroy(p->c);
}

static inline float bfr(float x) { return us_bf16_to_f32(us_f32_to_bf16(x)); }

/* n bf16-representable normals of standard deviation sd (caller frees). */
static inline float *rnd(size_t n, float sd, uint64_t seed) {
    float *h = malloc(n * sizeof(float) + 16);
    for (size_t i = 0; i < n; i++) h[i] = bfr(sd * us_rand_normal(seed, 77, i));
    return h;
}

static inline void *g_act(gpair *p, const float *h, size_t n) {
    uint16_t *tmp = malloc(n * 2 + 16);
    for (size_t i = 0; i < n; i++) tmp[i] = us_f32_to_bf16(h[i]);
    void *d = p->g->alloc(p->g, n * 2);
    p->g->upload(p->g, d, tmp, n * 2);
    free(tmp);
    return d;
}

static inline void *g_bytes(gpair *p, const void *h, size_t bytes) {
    void *d = p->g->alloc(p->g, bytes);
    p->g->upload(p->g, d, h, bytes);
    return d;
}

/* a device buffer filled with 0xFF bytes (NaN in bf16 and f32): unwritten outputs show. */
static inline void *g_poison(gpair *p, size_t bytes) {
    unsigned char *tmp = malloc(bytes + 16);
    memset(tmp, 0xff, bytes);
    void *d = g_bytes(p, tmp, bytes);
    free(tmp);
    return d;
}

static inline void *c_f32(gpair *p, const float *h, size_t n) {
    void *d = p->c->alloc(p->c, n * 4);
    memcpy(d, h, n * 4);
    return d;
}

static inline void *c_bytes(gpair *p, const void *h, size_t bytes) {
    void *d = p->c->alloc(p->c, bytes);
    memcpy(d, h, bytes);
    return d;
}

static inline double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

/* GPU bf16 buffer -> host floats (caller frees). */
static inline float *get_act(gpair *p, const void *d, size_t n) {
    uint16_t *tmp = malloc(n * 2 + 16);
    float *out = malloc(n * 4 + 16);
    p->g->download(p->g, tmp, d, n * 2);
    for (size_t i = 0; i < n; i++) out[i] = us_bf16_to_f32(tmp[i]);
    free(tmp);
    return out;
}

static inline float *get_f32(gpair *p, const void *d, size_t n) {
    float *out = malloc(n * 4 + 16);
    p->g->download(p->g, out, d, n * 4);
    return out;
}

static inline double err_act(gpair *p, const void *d, const float *ref, size_t n) {
    float *h = get_act(p, d, n);
    double e = rel_l2(h, ref, n);
    free(h);
    return e;
}

static inline double err_f32(gpair *p, const void *d, const float *ref, size_t n) {
    float *h = get_f32(p, d, n);
    double e = rel_l2(h, ref, n);
    free(h);
    return e;
}

#define OPEN_PAIR(p)                                                         \
    gpair p;                                                                 \
    CHECK(gpair_open(&p) == 0, "backends: %s", p.err.msg)

#endif
