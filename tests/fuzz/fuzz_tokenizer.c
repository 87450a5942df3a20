/* fuzz_tokenizer.c — libFuzzer target for the tokenizer.json loader (us_tokenizer_load_json on
 * the bytes); a tokenizer that loads then encodes and decodes a fixed text. */
#include "fuzz_util.h"
#include "tok/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    us_tokenizer *tok;
    us_err e;
    if (us_tokenizer_load_json((const char *)data, size, NULL, 0, "fuzz/tokenizer.json", &tok, &e) != US_OK) return 0;
    static const char text[] = "Hello, world! ab ba \xc3\xa9\xe2\x82\xac 123 <s>";
    int32_t *ids = NULL;
    size_t n = 0;
    if (us_tokenizer_encode(tok, text, sizeof text - 1, true, &ids, &n, &e) == US_OK) {
        char *back = NULL;
        size_t len;
        if (us_tokenizer_decode(tok, ids, n, false, &back, &len, &e) == US_OK) free(back);
    }
    free(ids);
    us_tokenizer_free(tok);
    return 0;
}
