/* config.h — a decoder's shape and hyper-parameters, read from a Hugging Face config.json.
 *
 * Accepted: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM. Qwen2 always has q/k/v
 * biases; Llama's attention_bias adds q/k/v/o biases and mlp_bias gate/up/down biases. RoPE
 * comes from rope_theta/rope_scaling (transformers 4) or rope_parameters (transformers 5), with
 * rope types default, linear and llama3. Anything else — another architecture, activation, rope
 * type, a missing or non-positive size, heads not dividing — is an error naming the file and key. */
#ifndef US_CONFIG_H
#define US_CONFIG_H

#include "core/common.h"

typedef enum us_act { US_ACT_SILU = 0, US_ACT_RELU = 1 } us_act;
typedef enum us_rope_type { US_ROPE_DEFAULT = 0, US_ROPE_LINEAR, US_ROPE_LLAMA3 } us_rope_type;

typedef struct us_config {
    char arch[64];       /* "LlamaForCausalLM", ... */
    char model_type[32]; /* "llama", "mistral", "qwen2" */
    int vocab, hidden, inter, layers, heads, kv_heads, head_dim, max_pos;
    us_act act;
    double rms_eps;
    double rope_theta;
    us_rope_type rope_type;
    double rope_factor;       /* linear and llama3 */
    double rope_low_freq;     /* llama3 low_freq_factor */
    double rope_high_freq;    /* llama3 high_freq_factor */
    int rope_orig_max_pos;    /* llama3 original_max_position_embeddings */
    bool tie_embeddings;
    bool qkv_bias, o_bias, mlp_bias;
    int sliding_window;       /* 0: none */
    int bos_id, eos_id;       /* -1 when absent (first of a list) */
} us_config;

/* path: a model directory (config.json inside) or the config.json itself. */
us_status us_config_load(const char *path, us_config *cfg, us_err *e);
/* Parses config JSON text; `where` names the source in messages. */
us_status us_config_parse(const char *json, size_t len, const char *where, us_config *cfg, us_err *e);

#endif
