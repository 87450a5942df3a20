/* batch.c — sampler and micro-batch layouts (see batch.h). Both layouts write every position of
 * the batch, so no state from a previous batch leaks into the next. */
#include "train/batch.h"

#include <stdlib.h>
#include <string.h>

void us_sampler_shuffle(us_sampler *s) {
    for (size_t i = 0; i < s->n; i++) s->perm[i] = i;
    for (size_t i = s->n; i > 1; i--) {
        size_t j = (size_t)(us_rand_uniform(s->seed, 7777 + s->epoch, i) * (double)i);
        if (j >= i) j = i - 1;
        size_t t = s->perm[i - 1];
        s->perm[i - 1] = s->perm[j];
        s->perm[j] = t;
    }
}

size_t us_sampler_peek(us_sampler *s) {
    if (s->cursor == s->n) {
        s->cursor = 0;
        s->epoch++;
        if (s->shuffle) us_sampler_shuffle(s);
    }
    return s->shuffle ? s->perm[s->cursor] : s->cursor;
}

size_t us_sampler_next(us_sampler *s) {
    size_t i = us_sampler_peek(s);
    s->cursor++;
    return i;
}

/* Writes one example (cut to n tokens) at row offset off; returns the counted targets. */
static long place(us_host_batch *hb, size_t row0, int off, const us_example *ex, int n) {
    long counted = 0;
    for (int j = 0; j < n; j++) {
        size_t i = row0 + (size_t)off + (size_t)j;
        hb->ids[i] = ex->ids[j];
        hb->pos[i] = j;
        if (hb->seg) hb->seg[i] = off;
        hb->targets[i] = j + 1 < n ? ex->labels[j + 1] : US_IGNORE_INDEX;
        counted += hb->targets[i] != US_IGNORE_INDEX;
    }
    return counted;
}

static void pad(us_host_batch *hb, size_t row0, int off, int seq) {
    for (int s = off; s < seq; s++) {
        size_t i = row0 + (size_t)s;
        hb->ids[i] = 0;
        hb->pos[i] = s - off;
        if (hb->seg) hb->seg[i] = off;
        hb->targets[i] = US_IGNORE_INDEX;
    }
}

void us_fill_batch(us_host_batch *hb, const us_token_dataset *ds, us_sampler *smp, int batch, int seq, bool packing) {
    hb->counted = 0;
    hb->examples = 0;
    for (int b = 0; b < batch; b++) {
        size_t row0 = (size_t)b * (size_t)seq;
        int off = 0;
        do {
            const us_example *ex = &ds->ex[packing ? us_sampler_peek(smp) : us_sampler_next(smp)];
            int n = (int)US_MIN((int64_t)seq, ex->n);
            if (packing) {
                if (off > 0 && off + n > seq) break; /* starts the next row */
                us_sampler_next(smp);
            }
            if (!packing) { /* padding mode keeps positions 0..seq-1 over the padding too */
                pad(hb, row0, 0, seq);
                for (int s = 0; s < seq; s++) hb->pos[row0 + (size_t)s] = s;
            }
            hb->counted += place(hb, row0, off, ex, n);
            hb->examples++;
            off += n;
        } while (packing && off < seq);
        if (packing) pad(hb, row0, off, seq);
    }
}

int us_steps_for_epochs(const us_token_dataset *ds, const us_sampler *smp, int epochs, int batch, int grad_accum,
                        int seq, bool packing) {
    size_t per_step = (size_t)batch * (size_t)grad_accum, rows = 0;
    if (!packing || ds->n == 0) {
        size_t ex = ds->n * (size_t)epochs;
        return (int)US_MIN((ex + per_step - 1) / per_step, (size_t)INT32_MAX);
    }
    us_sampler s = *smp;
    s.perm = s.shuffle ? malloc(s.n * sizeof *s.perm) : NULL;
    if (s.shuffle && !s.perm) return 0;
    if (s.shuffle) memcpy(s.perm, smp->perm, s.n * sizeof *s.perm);
    size_t target = (size_t)epochs * s.n, drawn = 0;
    while (drawn < target) { /* one packed row per iteration, counting only lengths */
        int off = 0;
        while (drawn < target) {
            int n = (int)US_MIN((int64_t)seq, ds->ex[us_sampler_peek(&s)].n);
            if (off > 0 && off + n > seq) break;
            us_sampler_next(&s);
            drawn++;
            off += n;
            if (off >= seq) break;
        }
        rows++;
    }
    free(s.perm);
    return (int)US_MIN((rows + per_step - 1) / per_step, (size_t)INT32_MAX);
}
