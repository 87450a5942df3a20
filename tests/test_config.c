/* test_config.c — config.json parsing: the committed transformers-5 fixtures, transformers-4
 * texts (llama3 rope_scaling, Qwen2 sliding-window rules), defaults, and one case per rejected
 * input checking the status and that the message names the source and the key at fault. */
#include <stdio.h>
#include <string.h>

#include "model/config.h"
#include "test.h"
#include "test_io_util.h"

#define WHERE "cfgtest/config.json"

static const char *const base_pairs[][2] = {
    {"architectures", "[\"LlamaForCausalLM\"]"},
    {"vocab_size", "256"},
    {"hidden_size", "64"},
    {"intermediate_size", "160"},
    {"num_hidden_layers", "2"},
    {"num_attention_heads", "4"},
};

/* A valid minimal config, with `extra` keys first (cJSON returns the first of duplicate keys, so
 * they override the base) and the base key `omit` left out. */
static const char *mk(const char *extra, const char *omit) {
    static char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "{%s%s", extra ? extra : "", extra && *extra ? ", " : "");
    int first = 1;
    for (size_t i = 0; i < sizeof base_pairs / sizeof base_pairs[0]; i++) {
        if (omit && strcmp(omit, base_pairs[i][0]) == 0) continue;
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\": %s", first ? "" : ", ", base_pairs[i][0],
                              base_pairs[i][1]);
        first = 0;
    }
    snprintf(buf + n, sizeof buf - n, "}");
    return buf;
}

static us_status parse(const char *json, us_config *c, us_err *e) {
    return us_config_parse(json, strlen(json), WHERE, c, e);
}

TEST(config_fixtures_tf5) {
    us_config c;
    us_err e;
    CHECK(us_config_load(FIXTURES "/llama_silu_gqa_tied/model", &c, &e) == US_OK, "%s", e.msg);
    CHECK(strcmp(c.arch, "LlamaForCausalLM") == 0 && strcmp(c.model_type, "llama") == 0, "arch %s", c.arch);
    CHECK(c.vocab == 256 && c.hidden == 64 && c.inter == 160 && c.layers == 2 && c.heads == 4 && c.kv_heads == 2 &&
              c.head_dim == 16 && c.max_pos == 512,
          "sizes");
    CHECK(c.act == US_ACT_SILU && c.rms_eps == 1e-5 && c.rope_theta == 10000.0 && c.rope_type == US_ROPE_DEFAULT,
          "act/eps/rope");
    CHECK(c.tie_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias && c.sliding_window == 0, "flags");
    CHECK(c.bos_id == 1 && c.eos_id == 2, "bos %d eos %d", c.bos_id, c.eos_id);

    CHECK(us_config_load(FIXTURES "/llama_relu_f16_sharded/model/config.json", &c, &e) == US_OK, "%s", e.msg);
    CHECK(c.act == US_ACT_RELU && c.head_dim == 32 && c.kv_heads == 4 && c.qkv_bias && c.o_bias && !c.mlp_bias &&
              !c.tie_embeddings,
          "relu fixture");

    CHECK(us_config_load(FIXTURES "/mistral_mlp/model", &c, &e) == US_OK, "%s", e.msg);
    CHECK(strcmp(c.arch, "MistralForCausalLM") == 0 && strcmp(c.model_type, "mistral") == 0, "arch");
    CHECK(c.sliding_window == 4096 && !c.tie_embeddings && !c.qkv_bias && c.kv_heads == 2, "mistral");

    CHECK(us_config_load(FIXTURES "/qwen2_bias_bf16/model", &c, &e) == US_OK, "%s", e.msg);
    CHECK(strcmp(c.arch, "Qwen2ForCausalLM") == 0 && strcmp(c.model_type, "qwen2") == 0, "arch");
    CHECK(c.qkv_bias && !c.o_bias && !c.mlp_bias && c.kv_heads == 1 && c.head_dim == 16, "qwen2 bias/heads");
    CHECK(c.rope_theta == 1e6 && c.rms_eps == 1e-6 && c.sliding_window == 0 && !c.tie_embeddings, "qwen2 rope");
    CHECK(c.bos_id == -1 && c.eos_id == -1, "null token ids");
}

/* transformers-4 configs of real checkpoints (values as published). */
static const char llama31[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_act\": \"silu\",\n"
    " \"attention_bias\": false, \"mlp_bias\": false, \"rms_norm_eps\": 1e-05, \"torch_dtype\": \"bfloat16\",\n"
    " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009], \"hidden_size\": 4096,\n"
    " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 128, \"vocab_size\": 128256, \"tie_word_embeddings\": false,\n"
    " \"rope_theta\": 500000.0, \"max_position_embeddings\": 131072,\n"
    " \"rope_scaling\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,\n"
    "   \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}";

static const char qwen25[] =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_act\": \"silu\",\n"
    " \"hidden_size\": 896, \"intermediate_size\": 4864, \"num_hidden_layers\": 24, \"num_attention_heads\": 14,\n"
    " \"num_key_value_heads\": 2, \"vocab_size\": 151936, \"tie_word_embeddings\": true, \"rope_theta\": 1000000.0,\n"
    " \"rms_norm_eps\": 1e-06, \"max_position_embeddings\": 32768, \"bos_token_id\": 151643,\n"
    " \"eos_token_id\": 151643, \"sliding_window\": 32768, \"use_sliding_window\": false,\n"
    " \"max_window_layers\": 21, \"rope_scaling\": null}";

TEST(config_tf4_real) {
    us_config c;
    us_err e;
    CHECK(parse(llama31, &c, &e) == US_OK, "%s", e.msg);
    CHECK(c.rope_type == US_ROPE_LLAMA3 && c.rope_factor == 8.0 && c.rope_low_freq == 1.0 && c.rope_high_freq == 4.0 &&
              c.rope_orig_max_pos == 8192 && c.rope_theta == 500000.0,
          "llama3 rope");
    CHECK(c.vocab == 128256 && c.kv_heads == 8 && c.head_dim == 128 && c.max_pos == 131072, "sizes");
    CHECK(c.bos_id == 128000 && c.eos_id == 128001, "eos list -> first: %d", c.eos_id);
    CHECK(parse(qwen25, &c, &e) == US_OK, "%s", e.msg);
    CHECK(c.head_dim == 64 && c.qkv_bias && !c.o_bias && c.tie_embeddings && c.sliding_window == 0 &&
              c.rope_type == US_ROPE_DEFAULT && c.rope_theta == 1e6,
          "qwen2.5");
    /* the same file through us_config_load, by file path and by directory */
    const char *dir = us_test_tmpdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(us_test_write(path, llama31, sizeof llama31 - 1) == 0, "write");
    CHECK(us_config_load(dir, &c, &e) == US_OK && c.rope_type == US_ROPE_LLAMA3, "%s", e.msg);
    CHECK(us_config_load(path, &c, &e) == US_OK && c.hidden == 4096, "%s", e.msg);
}

TEST(config_defaults_and_variants) {
    us_config c;
    us_err e;
    /* minimal: only model_type names the family */
    const char *min = "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 64, \"intermediate_size\": 8, "
                      "\"num_hidden_layers\": 1, \"num_attention_heads\": 4}";
    CHECK(parse(min, &c, &e) == US_OK, "%s", e.msg);
    CHECK(strcmp(c.arch, "LlamaForCausalLM") == 0 && c.kv_heads == 4 && c.head_dim == 16 && c.rms_eps == 1e-6 &&
              c.rope_theta == 10000.0 && !c.tie_embeddings && c.max_pos == 2048 && c.act == US_ACT_SILU &&
              c.bos_id == -1 && c.eos_id == -1 && c.rope_type == US_ROPE_DEFAULT,
          "defaults");
    /* an empty architectures list falls back on model_type too */
    CHECK(parse(mk("\"architectures\": [], \"model_type\": \"mistral\"", NULL), &c, &e) == US_OK &&
              strcmp(c.arch, "MistralForCausalLM") == 0,
          "%s", e.msg);
    CHECK(parse(mk("\"architectures\": null, \"model_type\": \"qwen2\"", NULL), &c, &e) == US_OK && c.qkv_bias,
          "%s", e.msg);
    /* linear scaling, with the older "type" spelling */
    CHECK(parse(mk("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.5}", NULL), &c, &e) == US_OK &&
              c.rope_type == US_ROPE_LINEAR && c.rope_factor == 2.5,
          "%s", e.msg);
    CHECK(parse(mk("\"rope_scaling\": {\"rope_type\": \"default\"}, \"rope_theta\": 5e5", NULL), &c, &e) == US_OK &&
              c.rope_type == US_ROPE_DEFAULT && c.rope_theta == 5e5,
          "%s", e.msg);
    /* transformers 5: rope_parameters, theta inside it wins */
    CHECK(parse(mk("\"rope_theta\": 1.0, \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", "
                   "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                   "\"original_max_position_embeddings\": 8192}",
                   NULL),
                &c, &e) == US_OK &&
              c.rope_type == US_ROPE_LLAMA3 && c.rope_factor == 32.0 && c.rope_theta == 500000.0,
          "%s", e.msg);
    CHECK(parse(mk("\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 4}", NULL), &c, &e) == US_OK &&
              c.rope_type == US_ROPE_LINEAR && c.rope_theta == 10000.0,
          "%s", e.msg);
    /* biases and extras */
    CHECK(parse(mk("\"attention_bias\": true, \"mlp_bias\": true, \"hidden_act\": \"relu\"", NULL), &c, &e) == US_OK &&
              c.qkv_bias && c.o_bias && c.mlp_bias && c.act == US_ACT_RELU,
          "%s", e.msg);
    CHECK(parse(mk("\"eos_token_id\": [], \"bos_token_id\": [7]", NULL), &c, &e) == US_OK && c.eos_id == -1 &&
              c.bos_id == 7,
          "%s", e.msg);
    CHECK(parse(mk("\"head_dim\": 32, \"num_key_value_heads\": null", NULL), &c, &e) == US_OK && c.head_dim == 32 &&
              c.kv_heads == 4,
          "%s", e.msg);
    /* Llama has no sliding window even if the key is there; Mistral's null means none */
    CHECK(parse(mk("\"sliding_window\": 100", NULL), &c, &e) == US_OK && c.sliding_window == 0, "%s", e.msg);
    CHECK(parse(mk("\"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": null", NULL), &c, &e) == US_OK &&
              c.sliding_window == 0,
          "%s", e.msg);
    /* Qwen2: the window applies only with use_sliding_window, and only to layers >= max_window_layers */
    const char *q = "\"architectures\": [\"Qwen2ForCausalLM\"], \"sliding_window\": 128, ";
    char buf[512];
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": false", q);
    CHECK(parse(mk(buf, NULL), &c, &e) == US_OK && c.sliding_window == 0, "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"max_window_layers\": 0", q);
    CHECK(parse(mk(buf, NULL), &c, &e) == US_OK && c.sliding_window == 128, "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true", q); /* default max_window_layers 28 > 2 layers */
    CHECK(parse(mk(buf, NULL), &c, &e) == US_OK && c.sliding_window == 0, "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"layer_types\": [\"sliding_attention\", "
                              "\"sliding_attention\"]", q);
    CHECK(parse(mk(buf, NULL), &c, &e) == US_OK && c.sliding_window == 128, "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"max_window_layers\": 1", q);
    us_status st = parse(mk(buf, NULL), &c, &e);
    CHECK(st == US_EUNSUPPORTED && tio_has(e.msg, WHERE) && tio_has(e.msg, "1 of 2 layers"), "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"layer_types\": [\"full_attention\", "
                              "\"sliding_attention\"]", q);
    st = parse(mk(buf, NULL), &c, &e);
    CHECK(st == US_EUNSUPPORTED && tio_has(e.msg, "use_sliding_window"), "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"layer_types\": [\"chunked\", \"full_attention\"]", q);
    st = parse(mk(buf, NULL), &c, &e);
    CHECK(st == US_EUNSUPPORTED && tio_has(e.msg, "layer_types"), "%s", e.msg);
    snprintf(buf, sizeof buf, "%s\"use_sliding_window\": true, \"layer_types\": [\"full_attention\"]", q);
    st = parse(mk(buf, NULL), &c, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, "layer_types"), "%s", e.msg);
}

typedef struct {
    const char *extra, *omit;
    us_status want;
    const char *n1, *n2;
} cfg_case;

static const cfg_case cfg_cases[] = {
    {"\"architectures\": [\"GPT2LMHeadModel\"]", NULL, US_EUNSUPPORTED, "\"architectures\"", "GPT2LMHeadModel"},
    {"\"architectures\": \"LlamaForCausalLM\"", NULL, US_EFORMAT, "\"architectures\"", "a string"},
    {"\"architectures\": [5]", NULL, US_EFORMAT, "\"architectures\"", "a number"},
    {"\"architectures\": [], \"model_type\": \"gpt2\"", NULL, US_EUNSUPPORTED, "\"model_type\"", "gpt2"},
    {"\"architectures\": [], \"model_type\": 3", NULL, US_EFORMAT, "\"model_type\"", "a number"},
    {"\"architectures\": []", NULL, US_EFORMAT, "\"architectures\"", "\"model_type\""},
    {"\"hidden_act\": \"gelu\"", NULL, US_EUNSUPPORTED, "\"hidden_act\"", "gelu"},
    {"\"hidden_act\": \"gelu_pytorch_tanh\"", NULL, US_EUNSUPPORTED, "\"hidden_act\"", "silu, relu"},
    {"\"hidden_act\": 1", NULL, US_EFORMAT, "\"hidden_act\"", "must be a string"},
    {"\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}", NULL, US_EUNSUPPORTED,
     "\"rope_scaling.rope_type\"", "yarn"},
    {"\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}", NULL, US_EUNSUPPORTED, "\"rope_scaling.type\"",
     "dynamic"},
    {"\"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": 10000}", NULL, US_EUNSUPPORTED,
     "\"rope_parameters.rope_type\"", "longrope"},
    {"\"rope_scaling\": {\"rope_type\": 7}", NULL, US_EFORMAT, "\"rope_scaling.rope_type\"", "must be a string"},
    {"\"rope_scaling\": \"linear\"", NULL, US_EFORMAT, "\"rope_scaling\"", "must be an object"},
    {"\"rope_parameters\": 10000", NULL, US_EFORMAT, "\"rope_parameters\"", "must be an object"},
    {"\"rope_scaling\": {\"rope_type\": \"linear\"}", NULL, US_EFORMAT, "\"rope_scaling.factor\"", "missing"},
    {"\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": -2}", NULL, US_EFORMAT, "\"rope_scaling.factor\"",
     "out of range"},
    {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"high_freq_factor\": 4, "
     "\"original_max_position_embeddings\": 8192}",
     NULL, US_EFORMAT, "\"rope_scaling.low_freq_factor\"", "missing"},
    {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 1, "
     "\"original_max_position_embeddings\": 8192}",
     NULL, US_EFORMAT, "high_freq_factor", "must exceed"},
    {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 4, "
     "\"original_max_position_embeddings\": 8192.5}",
     NULL, US_EFORMAT, "original_max_position_embeddings", "must be an integer"},
    {"\"rope_parameters\": {\"rope_theta\": \"big\"}", NULL, US_EFORMAT, "\"rope_parameters.rope_theta\"",
     "must be a number"},
    {"\"rope_theta\": 0", NULL, US_EFORMAT, "\"rope_theta\"", "out of range"},
    {"\"num_key_value_heads\": 3", NULL, US_EFORMAT, "\"num_key_value_heads\" = 3", "does not divide"},
    {"\"num_attention_heads\": 3", NULL, US_EFORMAT, "\"num_attention_heads\" = 3", "hidden_size"},
    {"\"head_dim\": 15", NULL, US_EFORMAT, "\"head_dim\" = 15", "even"},
    {"\"head_dim\": 0", NULL, US_EFORMAT, "\"head_dim\" = 0", "out of range"},
    {"\"num_attention_heads\": 65536, \"head_dim\": 512, \"num_key_value_heads\": 1", NULL, US_EFORMAT,
     "num_attention_heads x head_dim", "too large"},
    {NULL, "vocab_size", US_EFORMAT, "missing required key \"vocab_size\"", ""},
    {NULL, "hidden_size", US_EFORMAT, "missing required key \"hidden_size\"", ""},
    {NULL, "intermediate_size", US_EFORMAT, "missing required key \"intermediate_size\"", ""},
    {NULL, "num_hidden_layers", US_EFORMAT, "missing required key \"num_hidden_layers\"", ""},
    {NULL, "num_attention_heads", US_EFORMAT, "missing required key \"num_attention_heads\"", ""},
    {"\"vocab_size\": null", NULL, US_EFORMAT, "missing required key \"vocab_size\"", ""},
    {"\"vocab_size\": \"256\"", NULL, US_EFORMAT, "\"vocab_size\"", "must be an integer, got a string"},
    {"\"vocab_size\": 25.5", NULL, US_EFORMAT, "\"vocab_size\"", "must be an integer"},
    {"\"vocab_size\": 0", NULL, US_EFORMAT, "\"vocab_size\" = 0", "out of range"},
    {"\"hidden_size\": -64", NULL, US_EFORMAT, "\"hidden_size\" = -64", "out of range"},
    {"\"intermediate_size\": 16777216", NULL, US_EFORMAT, "\"intermediate_size\" = 16777216", "out of range"},
    {"\"num_hidden_layers\": 10000", NULL, US_EFORMAT, "\"num_hidden_layers\" = 10000", "out of range"},
    {"\"max_position_embeddings\": 0", NULL, US_EFORMAT, "\"max_position_embeddings\"", "out of range"},
    {"\"num_key_value_heads\": true", NULL, US_EFORMAT, "\"num_key_value_heads\"", "a boolean"},
    {"\"rms_norm_eps\": -1e-5", NULL, US_EFORMAT, "\"rms_norm_eps\"", "out of range"},
    {"\"rms_norm_eps\": \"1e-5\"", NULL, US_EFORMAT, "\"rms_norm_eps\"", "must be a number"},
    {"\"tie_word_embeddings\": \"yes\"", NULL, US_EFORMAT, "\"tie_word_embeddings\"", "true or false"},
    {"\"attention_bias\": 1", NULL, US_EFORMAT, "\"attention_bias\"", "true or false"},
    {"\"mlp_bias\": [true]", NULL, US_EFORMAT, "\"mlp_bias\"", "true or false"},
    {"\"bos_token_id\": \"<s>\"", NULL, US_EFORMAT, "\"bos_token_id\"", "integer"},
    {"\"eos_token_id\": -5", NULL, US_EFORMAT, "\"eos_token_id\"", "non-negative"},
    {"\"eos_token_id\": [\"</s>\"]", NULL, US_EFORMAT, "\"eos_token_id\"", "list"},
    {"\"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": -1", NULL, US_EFORMAT, "\"sliding_window\"",
     "out of range"},
    {"\"architectures\": [\"Qwen2ForCausalLM\"], \"use_sliding_window\": \"no\"", NULL, US_EFORMAT,
     "\"use_sliding_window\"", "true or false"},
};

TEST(config_rejects) {
    for (size_t i = 0; i < sizeof cfg_cases / sizeof cfg_cases[0]; i++) {
        const cfg_case *k = &cfg_cases[i];
        us_config c;
        us_err e = {{0}};
        const char *json = mk(k->extra, k->omit);
        us_status st = parse(json, &c, &e);
        CHECK(st == k->want, "case %zu (%s): status %d, want %d: %s", i, json, st, k->want, e.msg);
        CHECK(tio_has(e.msg, WHERE) && tio_has(e.msg, k->n1) && tio_has(e.msg, k->n2), "case %zu: %s", i, e.msg);
    }
}

TEST(config_malformed) {
    us_config c;
    us_err e;
    const char *bad = "{\n  \"vocab_size\": 256,\n  \"hidden_size\": ,\n}";
    CHECK(parse(bad, &c, &e) == US_EFORMAT && tio_has(e.msg, WHERE) && tio_has(e.msg, "malformed JSON") &&
              tio_has(e.msg, "line 3"),
          "%s", e.msg);
    CHECK(parse("[1, 2]", &c, &e) == US_EFORMAT && tio_has(e.msg, "must be a JSON object"), "%s", e.msg);
    CHECK(parse("", &c, &e) == US_EFORMAT && tio_has(e.msg, WHERE) && tio_has(e.msg, "empty"), "%s", e.msg);
    CHECK(parse("{} {}", &c, &e) == US_EFORMAT && tio_has(e.msg, "unexpected data"), "%s", e.msg);
    CHECK(us_config_parse(NULL, 0, WHERE, &c, &e) == US_EINVAL, "null text");
    CHECK(us_config_parse("{", 1, NULL, &c, &e) == US_EFORMAT && tio_has(e.msg, "config.json"), "%s", e.msg);
    /* files */
    const char *dir = us_test_tmpdir();
    char path[1024];
    CHECK(us_config_load(dir, &c, &e) == US_EIO && tio_has(e.msg, dir) && tio_has(e.msg, "config.json"), "%s", e.msg);
    snprintf(path, sizeof path, "%s/nothere", dir);
    CHECK(us_config_load(path, &c, &e) == US_EIO && tio_has(e.msg, path), "%s", e.msg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(us_test_write(path, bad, strlen(bad)) == 0, "write");
    CHECK(us_config_load(dir, &c, &e) == US_EFORMAT && tio_has(e.msg, path) && tio_has(e.msg, "line 3"), "%s", e.msg);
    const char *gelu = "{\"model_type\": \"llama\", \"hidden_act\": \"gelu\"}";
    CHECK(us_test_write(path, gelu, strlen(gelu)) == 0, "write");
    CHECK(us_config_load(path, &c, &e) != US_OK && tio_has(e.msg, path), "%s", e.msg);
    CHECK(us_config_load(NULL, &c, &e) == US_EINVAL, "null path");
}

/* transformers builds Mistral's projections without biases, whatever the config says; Llama
 * honours attention_bias and mlp_bias */
TEST(config_mistral_ignores_bias_keys) {
    us_config c;
    us_err e = {{0}};
    CHECK(parse(mk("\"architectures\": [\"MistralForCausalLM\"], \"attention_bias\": true, \"mlp_bias\": true", NULL), &c,
                &e) == US_OK, "%s", e.msg);
    CHECK(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "Mistral with biases");
    CHECK(parse(mk("\"attention_bias\": true, \"mlp_bias\": true", NULL), &c, &e) == US_OK, "%s", e.msg);
    CHECK(c.qkv_bias && c.o_bias && c.mlp_bias, "Llama without its biases");
}
