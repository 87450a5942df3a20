/* load.h — the training data of a run, whatever its format: pre-tokenized JSONL is read as is;
 * text formats (.txt, JSONL with text / Alpaca / chat / prompt-completion) go through the
 * model's tokenizer (tokenizer.json in the model directory, or an explicit one), through the
 * token cache beside the data (data/cache.h): built on the first run, mapped on the next while
 * the data, tokenizer and options are unchanged. */
#ifndef US_DATA_LOAD_H
#define US_DATA_LOAD_H

#include "data/formats.h"

typedef struct us_data_source {
    const char *path;
    const char *model_dir;      /* where tokenizer.json is looked for */
    const char *tokenizer;      /* explicit tokenizer.json or directory, or NULL */
    int vocab;                  /* the model's vocabulary: every id must lie below it */
    us_data_options opt;        /* seq_len, prompt masking, chat template, ... */
    bool no_cache;              /* text data: do not read or write the token cache */
    bool quiet;                 /* no notes on stderr (the cache, truncation) */
    int cache;                  /* out: 0 not used, 1 built now, 2 reused (data/cache.h) */
} us_data_source;

us_status us_data_load(us_data_source *src, us_token_dataset *ds, us_err *e);

#endif
