/* evaluate.c — forward-only loss over a dataset, batch by batch (see evaluate.h).
 *
 * Host buffers hold one batch of ids/targets/positions; device buffers are allocated per call
 * (evaluation is rare next to training steps). Padding rows and positions carry target -100,
 * which the fused cross-entropy skips, so they change neither the sum nor the count. */
#include "train/evaluate.h"

#include <stdlib.h>
#include <string.h>

us_status us_eval_dataset(us_model *m, const us_token_dataset *ds, int batch, int seq, float *logits_out,
                          double *loss_sum, long *counted, us_err *e) {
    *loss_sum = 0;
    *counted = 0;
    if (batch < 1 || seq < 1) return us_fail(e, US_EINVAL, "evaluation: batch %d x seq %d", batch, seq);
    if ((long)batch * seq > m->max_tokens)
        return us_fail(e, US_EINVAL, "evaluation: %d x %d tokens exceed the prepared %d", batch, seq, m->max_tokens);
    us_backend *be = m->be;
    size_t T = (size_t)batch * seq, V = (size_t)m->cfg.vocab;
    int32_t *ids = malloc(T * 4), *tg = malloc(T * 4), *pos = malloc(T * 4);
    int32_t *d_ids = be->alloc(be, T * 4), *d_tg = be->alloc(be, T * 4), *d_pos = be->alloc(be, T * 4);
    float *lg = logits_out ? malloc(T * V * 4) : NULL;
    us_status st = US_OK;
    if (!ids || !tg || !pos || !d_ids || !d_tg || !d_pos || (logits_out && !lg)) {
        st = us_fail(e, US_ENOMEM, "out of memory for evaluation batches");
        goto done;
    }
    for (size_t r0 = 0; r0 < ds->n && !st; r0 += (size_t)batch) {
        for (int b = 0; b < batch; b++) {
            const us_example *ex = r0 + b < ds->n ? &ds->ex[r0 + b] : NULL;
            int n = ex ? (int)US_MIN((int64_t)seq, ex->n) : 0;
            for (int s = 0; s < seq; s++) {
                size_t i = (size_t)b * seq + s;
                ids[i] = s < n ? ex->ids[s] : 0;
                pos[i] = s;
                tg[i] = s + 1 < n ? ex->labels[s + 1] : US_IGNORE_INDEX;
                if (tg[i] != US_IGNORE_INDEX) ++*counted;
            }
        }
        be->upload(be, d_ids, ids, T * 4);
        be->upload(be, d_tg, tg, T * 4);
        be->upload(be, d_pos, pos, T * 4);
        us_batch bt = {.batch = batch, .seq = seq, .ids = d_ids, .targets = d_tg, .pos = d_pos};
        double ls;
        st = us_model_forward(m, &bt, lg, &ls, e);
        *loss_sum += ls;
        if (!st && lg) {
            size_t rows = US_MIN((size_t)batch, ds->n - r0);
            memcpy(logits_out + r0 * seq * V, lg, rows * seq * V * 4);
        }
    }
done:
    free(ids);
    free(tg);
    free(pos);
    free(lg);
    be->free(be, d_ids);
    be->free(be, d_tg);
    be->free(be, d_pos);
    return st;
}
