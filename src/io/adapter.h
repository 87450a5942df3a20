/* adapter.h — PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors.
 *
 * Tensor names are PEFT's: base_model.model.model.layers.{L}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
 * and ...mlp.{gate,up,down}_proj.lora_{A,B}.weight; A is [r, in], B is [out, r]. The scaling is
 * alpha/r, or alpha/sqrt(r) with use_rslora. Saving writes the weights first, then the config,
 * each atomically, so a directory always holds a complete adapter. */
#ifndef US_ADAPTER_H
#define US_ADAPTER_H

#include "core/common.h"

enum {
    US_T_Q = 0, US_T_K, US_T_V, US_T_O, US_T_GATE, US_T_UP, US_T_DOWN, US_T_COUNT
};
/* "q_proj", ..., "down_proj" */
const char *us_target_name(int target);
/* Parses "q_proj,v_proj" (also "all" / "all-linear") into a bitmask of 1<<US_T_*. */
us_status us_targets_parse(const char *list, unsigned *mask, us_err *e);

typedef struct us_lora_config {
    int r;
    double alpha;
    bool rslora;
    unsigned targets; /* bitmask of 1 << US_T_* */
} us_lora_config;

double us_lora_scaling(const us_lora_config *c);

/* "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" */
void us_adapter_tensor_name(char *buf, size_t cap, int layer, int target, int is_b);

typedef struct us_adapter us_adapter;

/* Opens DIR/adapter_config.json and DIR/adapter_model.safetensors; rejects non-LORA peft_type,
 * DoRA, bias != none, fan_in_fan_out, rank_pattern/alpha_pattern entries, unknown targets. */
us_status us_adapter_open(const char *dir, us_adapter **out, us_err *e);
void us_adapter_close(us_adapter *a);
const us_lora_config *us_adapter_config(const us_adapter *a);
/* Copies one A (is_b = 0, [r, in]) or B (is_b = 1, [out, r]) as f32 into dst after checking the
 * shape; an error names the adapter file and tensor. */
us_status us_adapter_read(const us_adapter *a, int layer, int target, int is_b, int64_t rows, int64_t cols,
                          float *dst, us_err *e);

typedef struct us_adapter_pair {
    int layer, target;
    int64_t in, out;           /* A is [r, in], B is [out, r] */
    const float *A, *B;
} us_adapter_pair;

/* Writes a PEFT adapter into dir (created if needed). base_model: base_model_name_or_path. */
us_status us_adapter_save(const char *dir, const us_lora_config *c, const char *base_model,
                          const us_adapter_pair *pairs, size_t n, us_err *e);

#endif
