/* test_cli_errors.c — `unswag train` on bad input: a clear message, a non-zero exit, no crash,
 * and the adapter already in --out left exactly as it was (issue 2, "Bad input").
 *
 * Each test first makes a good adapter in TMP/out with a short successful run on the
 * llama_silu_gqa_tied fixture and keeps a copy of its bytes, then copies the fixture (model
 * directory and data) into TMP and breaks one thing: a missing path, an unsupported architecture,
 * a forged safetensors header (via cu_st_edit: a tensor removed, reshaped, retyped, moved out of
 * range or onto another), a truncated file, malformed JSON or JSONL, empty or unreadable data,
 * token ids outside the vocabulary, bad flag values. The run with --out TMP/out must exit 1 or 2
 * (never a signal), print no sanitizer report, print every expected fragment of its message
 * (the file and the problem), and leave TMP/out holding the same two files, byte for byte. */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "test_cli_util.h"

#define FIX FIXTURES "/llama_silu_gqa_tied"
#define OUT_CAP 16384

typedef struct env {
    char tmp[512], model[600], data[600], out[600], keep[600];
} env;

/* TMP/model and TMP/data.jsonl copied from the fixture; a good adapter in TMP/out, a copy in TMP/keep. */
static int env_setup(env *v, char *msg, size_t cap) {
    snprintf(v->tmp, sizeof v->tmp, "%s", us_test_tmpdir());
    snprintf(v->model, sizeof v->model, "%s/model", v->tmp);
    snprintf(v->data, sizeof v->data, "%s/data.jsonl", v->tmp);
    snprintf(v->out, sizeof v->out, "%s/out", v->tmp);
    snprintf(v->keep, sizeof v->keep, "%s/keep", v->tmp);
    char out[OUT_CAP];
    int rc = cu_run(out, sizeof out, "cp -r " FIX "/model '%s' && cp " FIX "/data.jsonl '%s'", v->model, v->data);
    if (rc) {
        snprintf(msg, cap, "copying the fixture failed: %s", cu_tail(out));
        return -1;
    }
    rc = cu_run(out, sizeof out, CU_ENV "%s train --model %s --data %s --out %s --steps 2 --lora-r 4 --quiet", cu_cli(),
                v->model, v->data, v->out);
    if (rc) {
        snprintf(msg, cap, "the good run failed (rc %d): %s", rc, cu_tail(out));
        return -1;
    }
    rc = cu_run(out, sizeof out, "cp -r '%s' '%s'", v->out, v->keep);
    if (rc || cu_count_entries(v->out) != 2) {
        snprintf(msg, cap, "expected 2 files in %s after the good run", v->out);
        return -1;
    }
    return 0;
}

/* The out directory still holds exactly the good adapter. */
static int out_untouched(const env *v) {
    char a[700], b[700];
    if (cu_count_entries(v->out) != 2) return 0;
    snprintf(a, sizeof a, "%s/adapter_model.safetensors", v->out);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", v->keep);
    if (!cu_same_file(a, b)) return 0;
    snprintf(a, sizeof a, "%s/adapter_config.json", v->out);
    snprintf(b, sizeof b, "%s/adapter_config.json", v->keep);
    return cu_same_file(a, b);
}

/* Runs `unswag train --model M --data D --out OUT EXTRA` and checks the failure contract; the
 * NULL-terminated fragments must all appear in the output. */
#define EXPECT_FAIL(v, model, data, extra, ...)                                                            \
    do {                                                                                                     \
        static char out_[OUT_CAP];                                                                           \
        int rc_ = cu_run(out_, sizeof out_, CU_ENV "%s train --model %s --data %s --out %s --steps 2 --lora-r 4 %s", \
                         cu_cli(), model, data, (v)->out, extra);                                            \
        CHECK(rc_ == 1 || rc_ == 2, "exit status %d (expected 1 or 2); output:\n%s", rc_, cu_tail(out_));             \
        CHECK(!cu_sanitizer_report(out_), "sanitizer report or crash:\n%s", cu_tail(out_));                          \
        const char *frags_[] = {__VA_ARGS__, NULL};                                                          \
        for (int i_ = 0; frags_[i_]; i_++)                                                                   \
            CHECK(strstr(out_, frags_[i_]), "message lacks \"%s\":\n%s", frags_[i_], cu_tail(out_));                \
        CHECK(out_untouched(v), "the adapter in %s changed; output:\n%s", (v)->out, cu_tail(out_));                  \
    } while (0)

#define SETUP(v)                                                                                           \
    env v;                                                                                                   \
    char setup_msg_[OUT_CAP];                                                                                \
    CHECK(env_setup(&v, setup_msg_, sizeof setup_msg_) == 0, "setup: %s", cu_tail(setup_msg_))

static char path_buf[4][700];
/* A path under TMP (4 rotating buffers). */
static const char *P(const env *v, const char *rel) {
    static int k;
    char *b = path_buf[k++ & 3];
    snprintf(b, 700, "%s/%s", v->tmp, rel);
    return b;
}

/* ------------------------------------------------------------------ missing paths */

TEST(cli_errors_missing_model_dir) {
    SETUP(v);
    EXPECT_FAIL(&v, P(&v, "no_such_model"), v.data, "", "no_such_model", "No such file");
}

TEST(cli_errors_missing_data_file) {
    SETUP(v);
    EXPECT_FAIL(&v, v.model, P(&v, "no_such.jsonl"), "", "no_such.jsonl", "o such");
}

TEST(cli_errors_missing_config_json) {
    SETUP(v);
    CHECK(remove(P(&v, "model/config.json")) == 0, "remove");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/config.json", "No such file");
}

TEST(cli_errors_missing_weights_file) {
    SETUP(v);
    CHECK(remove(P(&v, "model/model.safetensors")) == 0, "remove");
    EXPECT_FAIL(&v, v.model, v.data, "", "no model.safetensors or model.safetensors.index.json");
}

TEST(cli_errors_missing_adapter_init) {
    SETUP(v);
    EXPECT_FAIL(&v, v.model, v.data, "--adapter-init /nonexistent/adapter", "/nonexistent/adapter", "No such file");
}

TEST(cli_errors_missing_shard) {
    SETUP(v);
    CHECK(remove(P(&v, "model/model.safetensors")) == 0, "remove");
    CHECK(!cu_write(P(&v, "model/model.safetensors.index.json"),
                    "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\"}}"),
          "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                "cannot open");
}

/* ------------------------------------------------------------------ config.json */

static int edit_config(const env *v, const char *from, const char *to) {
    char *c = cu_slurp(P(v, "model/config.json"), NULL);
    if (!c) return -1;
    char *at = strstr(c, from);
    if (!at) {
        free(c);
        return -1;
    }
    size_t n = strlen(c) + strlen(to) + 1;
    char *o = malloc(n);
    snprintf(o, n, "%.*s%s%s", (int)(at - c), c, to, at + strlen(from));
    int r = cu_write(P(v, "model/config.json"), o);
    free(o);
    free(c);
    return r;
}

TEST(cli_errors_unsupported_architecture) {
    SETUP(v);
    CHECK(!edit_config(&v, "LlamaForCausalLM", "GPT2LMHeadModel"), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/config.json", "GPT2LMHeadModel is not supported");
}

TEST(cli_errors_unsupported_activation) {
    SETUP(v);
    CHECK(!edit_config(&v, "\"silu\"", "\"gelu\""), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/config.json", "hidden_act", "gelu", "not supported");
}

TEST(cli_errors_malformed_config_json) {
    SETUP(v);
    CHECK(!edit_config(&v, "\"hidden_size\": 64,", "\"hidden_size\": 64,,"), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/config.json", "malformed JSON at line");
}

TEST(cli_errors_config_wrong_type) {
    SETUP(v);
    CHECK(!edit_config(&v, "\"hidden_size\": 64", "\"hidden_size\": \"64\""), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/config.json", "hidden_size", "must be an integer");
}

TEST(cli_errors_config_size_mismatch) { /* config says 128 wide, the weights are 64 */
    SETUP(v);
    CHECK(!edit_config(&v, "\"hidden_size\": 64", "\"hidden_size\": 128"), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "has shape", "expected");
}

/* ------------------------------------------------------------------ safetensors */

static void h_remove(cJSON *h, void *arg) { cJSON_DeleteItemFromObjectCaseSensitive(h, (const char *)arg); }

TEST(cli_errors_missing_tensor) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_remove,
                      "model.layers.1.self_attn.k_proj.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "model.layers.1.self_attn.k_proj.weight not found");
}

static void h_reshape(cJSON *h, void *arg) { /* [160, 64] -> [64, 160]: same size, wrong shape */
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, (const char *)arg);
    cJSON *s = cJSON_GetObjectItemCaseSensitive(t, "shape");
    double a = cJSON_GetArrayItem(s, 0)->valuedouble, b = cJSON_GetArrayItem(s, 1)->valuedouble;
    cJSON_SetNumberValue(cJSON_GetArrayItem(s, 0), b);
    cJSON_SetNumberValue(cJSON_GetArrayItem(s, 1), a);
}

TEST(cli_errors_misshaped_tensor) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_reshape,
                      "model.layers.0.mlp.up_proj.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "model.layers.0.mlp.up_proj.weight has shape [64, 160]",
                "expected [160, 64]");
}

TEST(cli_errors_truncated_safetensors) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), NULL, NULL, 200000), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "exceed the data block", "truncated");
}

TEST(cli_errors_truncated_header) {
    SETUP(v);
    CHECK(!cu_run(NULL, 0, "head -c 300 " FIX "/model/model.safetensors > %s", P(&v, "model/model.safetensors")),
          "head");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "header length", "truncated");
}

TEST(cli_errors_tiny_safetensors) {
    SETUP(v);
    CHECK(!cu_write(P(&v, "model/model.safetensors"), "abc"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "too short");
}

static void h_far_offsets(cJSON *h, void *arg) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, (const char *)arg);
    cJSON *o = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    double len = cJSON_GetArrayItem(o, 1)->valuedouble - cJSON_GetArrayItem(o, 0)->valuedouble;
    cJSON_SetNumberValue(cJSON_GetArrayItem(o, 0), 1e12);
    cJSON_SetNumberValue(cJSON_GetArrayItem(o, 1), 1e12 + len);
}

TEST(cli_errors_offsets_out_of_range) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_far_offsets,
                      "model.norm.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "model.norm.weight", "exceed the data block");
}

static void h_lying_length(cJSON *h, void *arg) { /* end - begin disagrees with shape x dtype */
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, (const char *)arg);
    cJSON *o = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    cJSON_SetNumberValue(cJSON_GetArrayItem(o, 1), cJSON_GetArrayItem(o, 1)->valuedouble - 4);
}

TEST(cli_errors_lying_tensor_length) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_lying_length,
                      "model.norm.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "model.norm.weight", "bytes but shape");
}

static void h_overlap(cJSON *h, void *arg) { /* v_proj's data moved onto k_proj's (same size) */
    (void)arg;
    cJSON *k = cJSON_GetObjectItemCaseSensitive(h, "model.layers.0.self_attn.k_proj.weight");
    cJSON *vv = cJSON_GetObjectItemCaseSensitive(h, "model.layers.0.self_attn.v_proj.weight");
    cJSON_ReplaceItemInObjectCaseSensitive(vv, "data_offsets",
                                           cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(k, "data_offsets"), 1));
}

TEST(cli_errors_overlapping_tensors) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_overlap, NULL, -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "overlap");
}

static void h_dtype(cJSON *h, void *arg) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, (const char *)arg);
    cJSON_ReplaceItemInObjectCaseSensitive(t, "dtype", cJSON_CreateString("I32"));
}

TEST(cli_errors_wrong_dtype_matrix) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_dtype,
                      "model.layers.0.self_attn.q_proj.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "model.layers.0.self_attn.q_proj.weight", "I32");
}

TEST(cli_errors_wrong_dtype_vector) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_dtype,
                      "model.layers.0.input_layernorm.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "input_layernorm.weight", "I32");
}

static void h_unknown_dtype(cJSON *h, void *arg) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, (const char *)arg);
    cJSON_ReplaceItemInObjectCaseSensitive(t, "dtype", cJSON_CreateString("F8_E4M3"));
}

TEST(cli_errors_unknown_dtype) {
    SETUP(v);
    CHECK(!cu_st_edit(FIX "/model/model.safetensors", P(&v, "model/model.safetensors"), h_unknown_dtype,
                      "model.norm.weight", -1), "edit");
    EXPECT_FAIL(&v, v.model, v.data, "", "model/model.safetensors", "unknown dtype \"F8_E4M3\"");
}

/* ------------------------------------------------------------------ data */

TEST(cli_errors_malformed_jsonl) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2,\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:2", "malformed JSON");
}

TEST(cli_errors_jsonl_wrong_types) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": \"1 2 3\"}\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:1", "\"input_ids\" must be an array");
}

TEST(cli_errors_jsonl_label_length) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:1", "\"labels\" has 2 entries");
}

TEST(cli_errors_empty_data) {
    SETUP(v);
    CHECK(!cu_write(v.data, ""), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl", "no examples");
}

TEST(cli_errors_blank_data) {
    SETUP(v);
    CHECK(!cu_write(v.data, "\n   \n\t\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl", "no examples");
}

TEST(cli_errors_data_is_directory) { /* tests run as root, so permissions cannot make a file unreadable */
    SETUP(v);
    CHECK(!cu_run(NULL, 0, "mkdir %s", P(&v, "data_dir.jsonl")), "mkdir");
    EXPECT_FAIL(&v, v.model, P(&v, "data_dir.jsonl"), "", "data_dir.jsonl", "is a directory");
}

TEST(cli_errors_token_id_at_vocab) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 256, 3]}\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:2", "= 256 is outside the vocabulary [0, 256)");
}

TEST(cli_errors_negative_token_id) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": [1, -100, 3]}\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:1", "-100 is outside the vocabulary");
}

TEST(cli_errors_label_at_vocab) {
    SETUP(v);
    CHECK(!cu_write(v.data, "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 999]}\n"), "write");
    EXPECT_FAIL(&v, v.model, v.data, "", "data.jsonl:1", "\"labels\"[2] = 999 is outside the vocabulary");
}

/* ------------------------------------------------------------------ flags */

TEST(cli_errors_bad_flag_values) {
    SETUP(v);
    EXPECT_FAIL(&v, v.model, v.data, "--lr abc", "--lr abc", "expected a number");
    EXPECT_FAIL(&v, v.model, v.data, "--lr nan", "--lr nan", "expected a number");
    EXPECT_FAIL(&v, v.model, v.data, "--lr -1", "--lr", "non-negative");
    EXPECT_FAIL(&v, v.model, v.data, "--steps 0", "--steps 0", "expected an integer");
    EXPECT_FAIL(&v, v.model, v.data, "--batch -3", "--batch -3", "expected an integer");
    EXPECT_FAIL(&v, v.model, v.data, "--batch 99999999999999999999", "--batch", "expected an integer");
    EXPECT_FAIL(&v, v.model, v.data, "--lora-r 0", "--lora-r 0", "expected an integer");
    EXPECT_FAIL(&v, v.model, v.data, "--lora-targets q_proj,foo_proj", "--lora-targets", "foo_proj");
    EXPECT_FAIL(&v, v.model, v.data, "--schedule sometimes", "--schedule sometimes", "constant, linear or cosine");
    EXPECT_FAIL(&v, v.model, v.data, "--beta1 1.5", "--beta1", "[0, 1)");
    EXPECT_FAIL(&v, v.model, v.data, "--grad-clip -1", "--grad-clip", ">= 0");
    EXPECT_FAIL(&v, v.model, v.data, "--seq-len 100000", "--seq-len 100000", "max_position_embeddings");
    EXPECT_FAIL(&v, v.model, v.data, "--device tpu", "tpu");
    EXPECT_FAIL(&v, v.model, v.data, "--frobnicate", "unknown option --frobnicate");
    EXPECT_FAIL(&v, v.model, v.data, "--seed", "--seed needs a value");
    EXPECT_FAIL(&v, v.model, v.data, "--max-memory 0", "--max-memory 0", "above 0");
    EXPECT_FAIL(&v, v.model, v.data, "--max-memory lots", "--max-memory lots", "expected a number");
    EXPECT_FAIL(&v, v.model, v.data, "--recompute mlp:0", "--recompute mlp:0", "mlp:LAYERS");
    EXPECT_FAIL(&v, v.model, v.data, "--recompute layer:3", "--recompute layer:3", "mlp:LAYERS");
    EXPECT_FAIL(&v, v.model, v.data, "--keep-attn 2", "--keep-attn", "add --offload or --recompute layer");
    EXPECT_FAIL(&v, v.model, v.data, "--offload-attn 1 --recompute mlp", "--offload-attn", "add --offload");
    EXPECT_FAIL(&v, v.model, v.data, "--offload --keep-attn 1 --max-memory 3", "--keep-attn with --max-memory");
    EXPECT_FAIL(&v, v.model, v.data, "--offload --keep-attn 0", "--keep-attn 0", "expected an integer");
    /* the embedding of a tied model is its LM head: it cannot leave the device */
    EXPECT_FAIL(&v, v.model, v.data, "--offload-embed", "embedding table cannot stay in host memory", "tied to the LM head");
    EXPECT_FAIL(&v, v.model, v.data, "--offload-mlp 0", "--offload-mlp 0", "expected an integer");
    /* a budget no plan fits: names the smallest plan's need */
    EXPECT_FAIL(&v, v.model, v.data, "--max-memory 0.0001", "--max-memory 0.0001", "no plan fits", "MiB");
}

TEST(cli_errors_out_is_a_file) {
    SETUP(v);
    char out[OUT_CAP];
    CHECK(!cu_write(P(&v, "afile"), "x"), "write");
    int rc = cu_run(out, sizeof out, CU_ENV "%s train --model %s --data %s --out %s --steps 1", cu_cli(), v.model, v.data,
                    P(&v, "afile"));
    CHECK(rc == 1, "rc %d: %s", rc, cu_tail(out));
    CHECK(!cu_sanitizer_report(out), "%s", cu_tail(out));
    CHECK(strstr(out, "afile") && strstr(out, "not a directory"), "%s", cu_tail(out));
    size_t len;
    char *c = cu_slurp(P(&v, "afile"), &len);
    CHECK(c && len == 1 && c[0] == 'x', "the file given as --out changed");
    free(c);
}
