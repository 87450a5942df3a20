/* fuzz_adapter.c — libFuzzer target for the PEFT adapter loader. The input is split at the first
 * "\n@@\n": the part before is adapter_config.json, the rest adapter_model.safetensors (no
 * separator: all of it is the config, with a valid one-pair safetensors). When the adapter opens,
 * every targeted A and B of layer 0 is read with the shapes of an 8-wide model. */
#include "fuzz_util.h"
#include "io/adapter.h"

static const uint8_t default_st[] = {
#include "fuzz_adapter_default.inc"
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = NULL;
    for (size_t i = 0; i + 4 <= size && !sep; i++)
        if (!memcmp(data + i, "\n@@\n", 4)) sep = data + i;
    size_t cl = sep ? (size_t)(sep - data) : size;
    fuzz_file(0, "adapter_config.json", data, cl);
    if (sep)
        fuzz_file(1, "adapter_model.safetensors", sep + 4, size - cl - 4);
    else
        fuzz_file(1, "adapter_model.safetensors", default_st, sizeof default_st);
    us_adapter *a;
    us_err e;
    if (us_adapter_open(fuzz_dir(), &a, &e) != US_OK) return 0;
    const us_lora_config *c = us_adapter_config(a);
    float *buf = malloc((size_t)c->r * 8 * 4 + 4);
    for (int t = 0; t < US_T_COUNT; t++)
        if (c->targets & (1u << t)) {
            us_adapter_read(a, 0, t, 0, c->r, 8, buf, &e);
            us_adapter_read(a, 0, t, 1, 8, c->r, buf, &e);
        }
    free(buf);
    us_adapter_close(a);
    return 0;
}
