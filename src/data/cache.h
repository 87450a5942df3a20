/* cache.h — the memory-mapped token cache of a text dataset: DATA.unswag-cache beside DATA.
 *
 * Tokenizing a large text dataset is done once: the examples stream into the cache file as they
 * are tokenized (nothing but the current row is held in memory), and every run maps the file
 * read-only and points the dataset's examples into the mapping, so a multi-GB JSONL file need
 * not fit in memory. The file is reused only while its key matches: a hash of the data file's
 * size and mtime, the bytes of tokenizer.json and tokenizer_config.json, the options that shape
 * the examples (seq_len, refuse_long, train_on_prompt, no_eos, the chat template and, when that
 * names a file, its bytes) and the format version. A file whose size, offsets or payload hash do
 * not check out is rebuilt, never trusted. Writes go to a temporary file renamed into place, so a
 * crash leaves the old cache or none.
 *
 * Layout (little-endian): a 64-byte header {magic "USTOKC01", key[2], n_examples, n_tokens,
 * n_truncated, payload hash, 0}, then per example its ids then its labels (int32), then the
 * offsets table (uint64, n_examples + 1 token counts; example k has 2*offsets[k] int32 before it). */
#ifndef US_DATA_CACHE_H
#define US_DATA_CACHE_H

#include <stdio.h>

#include "data/formats.h"

typedef struct us_token_spill us_token_spill;

/* The key of a dataset under a tokenizer (tokenizer: tokenizer.json or its directory). */
us_status us_cache_key(const char *data_path, const char *tokenizer, const us_data_options *o, uint64_t key[2],
                       us_err *e);
/* Maps cache_path when it is intact and its key matches: *ds points into the mapping, and
 * *n_truncated is what the build counted. Returns false (ds untouched) otherwise; *why (optional)
 * says why ("absent", "stale", "corrupt: ..."). */
bool us_cache_open(const char *cache_path, const uint64_t key[2], us_token_dataset *ds, size_t *n_truncated,
                   const char **why);
/* Starts writing a cache (to cache_path + ".tmp.PID"); examples pushed into a dataset whose
 * spill is set go to the file (data/tokens.h). */
us_status us_cache_begin(const char *cache_path, const uint64_t key[2], us_token_spill **out, us_err *e);
us_status us_cache_spill_push(us_token_spill *sp, const int32_t *ids, const int32_t *labels, int64_t n, us_err *e);
/* Writes the offsets and header, syncs and renames the file into place; frees sp either way. */
us_status us_cache_commit(us_token_spill *sp, size_t n_truncated, us_err *e);
/* Removes the temporary file and frees sp (after a failed load). */
void us_cache_abort(us_token_spill *sp);

#endif
