/* batch.h — how the trainer turns examples into micro-batches: the sampler (file order, or a
 * seeded permutation per epoch) and the two row layouts.
 *
 * Padding (the default): one example per row, cut to seq tokens, the rest of the row padding.
 * Packing: examples are laid into a row one after another, in sampler order, while they fit; an
 * example that does not fit in what is left of a row starts the next row (it is only peeked at,
 * not drawn, so the sampler's cursor stays exact for checkpoints), and one longer than seq is cut.
 * Each example's positions restart at 0 and seg_start holds the row offset where it begins, so
 * attention never crosses examples (backend.h); the target that would predict the next example's
 * first token is -100. Padding at the end of a packed row is a segment of its own, all -100. */
#ifndef US_TRAIN_BATCH_H
#define US_TRAIN_BATCH_H

#include "core/common.h"
#include "data/tokens.h"

typedef struct us_sampler {
    size_t n, cursor, epoch;
    size_t *perm; /* n entries, owned by the caller */
    bool shuffle;
    uint64_t seed;
} us_sampler;

/* Draws epoch `epoch`'s permutation (call once after setting the fields when shuffling). */
void us_sampler_shuffle(us_sampler *s);
/* The next example index without drawing it (starts the next epoch when this one is done). */
size_t us_sampler_peek(us_sampler *s);
size_t us_sampler_next(us_sampler *s);

/* Host side of one micro-batch of batch x seq tokens. seg may be NULL in padding mode. */
typedef struct us_host_batch {
    int32_t *ids, *targets, *pos, *seg;
    long counted; /* targets that are not -100 */
    int examples; /* examples placed (packing: across all rows) */
} us_host_batch;

void us_fill_batch(us_host_batch *hb, const us_token_dataset *ds, us_sampler *smp, int batch, int seq, bool packing);

/* Optimizer steps that cover `epochs` passes over the data with batch*grad_accum rows a step:
 * exact for packing too (the packer is run over a copy of the sampler, counting rows). */
int us_steps_for_epochs(const us_token_dataset *ds, const us_sampler *smp, int epochs, int batch, int grad_accum,
                        int seq, bool packing);

#endif
