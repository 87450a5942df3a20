/* decode.h — generation: incremental decoding with a key/value cache, and token sampling.
 *
 * A us_decoder holds, for one sequence, every layer's rotated keys and values up to max_ctx
 * positions. Feeding n tokens runs the decoder over just those n (prompt prefill: n at once;
 * generation: one at a time), appends their keys/values to the cache and returns the logits of
 * the last one. LoRA adapters loaded into the model (us_model_setup_training +
 * us_model_load_adapter) apply as in training. See decode.c for the design. */
#ifndef US_DECODE_H
#define US_DECODE_H

#include "model/model.h"

/* A model for inference: us_model_load from model_dir, then, when adapter_dir is not NULL, the
 * LoRA adapter with its own config (r, alpha, targets, rsLoRA) applied in the forward. */
us_status us_model_load_inference(us_model **out, us_backend *be, const char *model_dir, const char *adapter_dir,
                                  us_err *e);

typedef struct us_decoder us_decoder;

/* max_ctx: the longest sequence (prompt + generated) this decoder will hold (<= max_pos). */
us_status us_decoder_create(us_model *m, int max_ctx, us_decoder **out, us_err *e);
void us_decoder_free(us_decoder *d);
/* Forgets the sequence (the cache is reused). */
void us_decoder_reset(us_decoder *d);
/* Tokens in the cache so far. */
int us_decoder_len(const us_decoder *d);
/* Appends ids[0..n) at the next positions; logits (optional, host f32 [vocab]) receives the
 * logits that follow the last of them. An error when the cache would overflow or an id is
 * outside the vocabulary. */
us_status us_decoder_feed(us_decoder *d, const int32_t *ids, int n, float *logits, us_err *e);

/* Sampling settings: temperature <= 0 is greedy (argmax; ties to the lowest id). top_k 0 and
 * top_p >= 1 switch those filters off. */
typedef struct us_sampler {
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed, counter;
} us_sampler;

int32_t us_argmax(const float *logits, int vocab);
/* Draws the next id from logits [vocab] (modified: becomes scratch). Advances s->counter. */
int32_t us_sample(us_sampler *s, float *logits, int vocab);

#endif
