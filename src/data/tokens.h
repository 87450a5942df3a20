/* tokens.h — training examples as token ids and labels, and the readers that produce them.
 *
 * An example is a row of input ids with labels (-100 = not counted in the loss). The pre-tokenized
 * JSONL reader takes one object per line: {"input_ids": [...], "labels": [...]} (labels optional,
 * default = input_ids, same length required). Every id is checked against the vocabulary; errors
 * name file:line. */
#ifndef US_TOKENS_H
#define US_TOKENS_H

#include "core/common.h"

#define US_IGNORE_INDEX (-100)

typedef struct us_example {
    int32_t *ids;
    int32_t *labels;
    int64_t n;
} us_example;

typedef struct us_token_dataset {
    us_example *ex;
    size_t n;
    size_t cap;
    /* Token memory not owned per example: map (munmap'd on free) holds every example's ids and
     * labels (a token cache, data/cache.h); shared: another dataset owns them (--val-split). */
    void *map;
    size_t map_len;
    bool shared;
    /* When set, us_token_dataset_push streams examples into a token cache being built
     * (data/cache.h) and only counts them in n; ex stays empty. */
    struct us_token_spill *spill;
} us_token_dataset;

/* vocab > 0: ids must lie in [0, vocab), labels in [0, vocab) or -100. Empty file: error. */
us_status us_jsonl_tokens_load(const char *path, int vocab, us_token_dataset *ds, us_err *e);
/* Appends a copy of an example (labels NULL: copy of ids). */
us_status us_token_dataset_push(us_token_dataset *ds, const int32_t *ids, const int32_t *labels, int64_t n,
                                us_err *e);
void us_token_dataset_free(us_token_dataset *ds);

#endif
