/* fuzz_config.c — libFuzzer target for the config.json parser (us_config_parse on the bytes),
 * with invariants on what it accepts: sizes positive, heads dividing, head_dim even. */
#include "fuzz_util.h"
#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    us_config c;
    us_err e;
    if (us_config_parse((const char *)data, size, "fuzz/config.json", &c, &e) != US_OK) return 0;
    if (c.vocab <= 0 || c.hidden <= 0 || c.inter <= 0 || c.layers <= 0 || c.heads <= 0 || c.kv_heads <= 0 ||
        c.heads % c.kv_heads != 0 || c.head_dim <= 0 || c.head_dim % 2 != 0 || !(c.rms_eps > 0) || !(c.rope_theta > 0))
        abort();
    return 0;
}
