/* cpu_decode.c — the CPU backend's ops for incremental decoding (generation with a KV cache).
 *
 * attn_cached is causal attention of a few new query rows over a sequence's key/value cache:
 * the same arithmetic as cpu_attn_fwd (scores, max-shifted exp, float64 normaliser, weighted sum
 * of values) so a token decoded with the cache sees the numbers the full forward would, but with
 * queries at positions start..start+T-1 and keys 0..start+i. Parallel over (query, head). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

static void cpu_attn_cached(us_backend *be, void *o, const void *q, const void *kc, const void *vc, int T, int start,
                            const us_attn_shape *sh) {
    (void)be;
    const int H = sh->heads, KV = sh->kv_heads, hd = sh->head_dim, grp = H / KV, n_ctx = start + T;
    const float *Q = q, *K = kc, *V = vc;
    float *O = o;
    #pragma omp parallel
    {
        float *p = malloc((size_t)n_ctx * sizeof(float));
        #pragma omp for collapse(2) schedule(dynamic, 1)
        for (int i = 0; i < T; i++)
            for (int h = 0; h < H; h++) {
                if (!p) continue;
                int kh = h / grp, last = start + i;
                const float *qi = Q + ((size_t)i * H + h) * hd;
                float m = -INFINITY;
                for (int j = 0; j <= last; j++) {
                    const float *kj = K + ((size_t)j * KV + kh) * hd;
                    float s = 0;
                    for (int d = 0; d < hd; d++) s += qi[d] * kj[d];
                    p[j] = sh->scale * s;
                    if (p[j] > m) m = p[j];
                }
                double l = 0;
                for (int j = 0; j <= last; j++) {
                    p[j] = expf(p[j] - m);
                    l += p[j];
                }
                float inv = (float)(1.0 / l), *oi = O + ((size_t)i * H + h) * hd;
                memset(oi, 0, (size_t)hd * sizeof(float));
                for (int j = 0; j <= last; j++) {
                    const float *vj = V + ((size_t)j * KV + kh) * hd;
                    float w = p[j] * inv;
                    for (int d = 0; d < hd; d++) oi[d] += w * vj[d];
                }
            }
        free(p);
    }
}

void us_cpu_decode_install(us_backend *be) { be->attn_cached = cpu_attn_cached; }
