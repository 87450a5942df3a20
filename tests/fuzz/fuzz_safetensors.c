/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: us_st_open on the input, then
 * every tensor's bytes read (converted to f32 where floating), so a header that lies about
 * offsets would read outside the mapping under ASan. */
#include "fuzz_util.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_file(0, "x.safetensors", data, size);
    us_err e;
    us_st_file *f;
    if (us_st_open(p, &f, &e) != US_OK) return 0;
    for (size_t i = 0; i < us_st_count(f); i++) {
        const us_st_tensor *t = us_st_at(f, i);
        if (t->numel > (1 << 20)) continue;
        float *buf = malloc(t->numel ? (size_t)t->numel * 4 : 4);
        if (!us_convert_to_f32(buf, t->data, t->dtype, (size_t)t->numel)) {
            volatile uint8_t x = 0;
            for (size_t b = 0; b < t->nbytes; b++) x ^= ((const uint8_t *)t->data)[b];
            (void)x;
        }
        free(buf);
        if (!us_st_find(f, t->name)) abort(); /* every listed tensor must be found by name */
    }
    us_st_close(f);
    return 0;
}
