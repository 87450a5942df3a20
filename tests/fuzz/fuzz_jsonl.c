/* fuzz_jsonl.c — libFuzzer target for the pre-tokenized JSONL reader (vocabulary 256), with the
 * invariants a loaded dataset must keep: every id in [0, 256), every label there or -100. */
#include "data/tokens.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_file(0, "x.jsonl", data, size);
    us_token_dataset ds;
    us_err e;
    if (us_jsonl_tokens_load(p, 256, &ds, &e) == US_OK) {
        for (size_t i = 0; i < ds.n; i++)
            for (int64_t j = 0; j < ds.ex[i].n; j++)
                if (ds.ex[i].ids[j] < 0 || ds.ex[i].ids[j] >= 256 ||
                    ((ds.ex[i].labels[j] < 0 || ds.ex[i].labels[j] >= 256) && ds.ex[i].labels[j] != US_IGNORE_INDEX))
                    abort();
    }
    us_token_dataset_free(&ds);
    return 0;
}
