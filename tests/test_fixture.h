/* test_fixture.h — the oracle's batch for a fixture's data on a backend: every row, labels shifted
 * left as transformers does (logits[:, :-1] vs labels[:, 1:]), written here independently of the
 * trainer's batching so tests do not check the trainer against itself. */
#ifndef US_TEST_FIXTURE_H
#define US_TEST_FIXTURE_H

#include <stdlib.h>

#include "data/tokens.h"
#include "model/model.h"

/* Fills b with device buffers; returns the number of counted (non -100) targets. Rows must share
 * one length. Free with us_test_batch_free. */
static inline int us_test_fixture_batch(us_backend *be, const us_token_dataset *ds, us_batch *b) {
    int B = (int)ds->n, S = (int)ds->ex[0].n, T = B * S, counted = 0;
    int32_t *ids = malloc((size_t)T * 4), *tg = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4);
    for (int r = 0; r < B; r++)
        for (int s = 0; s < S; s++) {
            ids[r * S + s] = ds->ex[r].ids[s];
            pos[r * S + s] = s;
            tg[r * S + s] = s + 1 < S ? ds->ex[r].labels[s + 1] : -100;
            counted += tg[r * S + s] != -100;
        }
    *b = (us_batch){.batch = B, .seq = S, .ids = be->alloc(be, (size_t)T * 4), .targets = be->alloc(be, (size_t)T * 4),
                    .pos = be->alloc(be, (size_t)T * 4)};
    be->upload(be, b->ids, ids, (size_t)T * 4);
    be->upload(be, b->targets, tg, (size_t)T * 4);
    be->upload(be, b->pos, pos, (size_t)T * 4);
    free(ids);
    free(tg);
    free(pos);
    return counted;
}

static inline void us_test_batch_free(us_backend *be, us_batch *b) {
    be->free(be, b->ids);
    be->free(be, b->targets);
    be->free(be, b->pos);
}

#endif
