/* test_adapter.c — PEFT adapters: target lists, the committed PEFT adapters (values cross-checked
 * against the raw file), save -> open round trips and the saved config's keys, and every rejected
 * config key, tensor set and save argument, checking status and that the message names the file
 * and the problem. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "io/adapter.h"
#include "io/safetensors.h"
#include "test.h"
#include "test_io_util.h"

TEST(adapter_targets_parse) {
    unsigned m;
    us_err e;
    CHECK(us_targets_parse("q_proj,v_proj", &m, &e) == US_OK && m == ((1u << US_T_Q) | (1u << US_T_V)), "%s", e.msg);
    CHECK(us_targets_parse(" down_proj , gate_proj,up_proj ", &m, &e) == US_OK &&
              m == ((1u << US_T_DOWN) | (1u << US_T_GATE) | (1u << US_T_UP)),
          "%s", e.msg);
    CHECK(us_targets_parse("all", &m, &e) == US_OK && m == 0x7f, "all");
    CHECK(us_targets_parse("all-linear", &m, &e) == US_OK && m == 0x7f, "all-linear");
    CHECK(us_targets_parse("k_proj,o_proj,k_proj", &m, &e) == US_OK && m == ((1u << US_T_K) | (1u << US_T_O)), "dup");
    CHECK(us_targets_parse("q_proj,foo_proj", &m, &e) == US_EINVAL && m == 0 && tio_has(e.msg, "\"foo_proj\"") &&
              tio_has(e.msg, "unknown"),
          "%s", e.msg);
    CHECK(us_targets_parse("", &m, &e) == US_EINVAL && tio_has(e.msg, "empty"), "%s", e.msg);
    CHECK(us_targets_parse("q_proj,,v_proj", &m, &e) == US_EINVAL && tio_has(e.msg, "empty"), "%s", e.msg);
    CHECK(us_targets_parse("q_proj,", &m, &e) == US_EINVAL, "trailing comma");
    CHECK(us_targets_parse("Q_PROJ", &m, &e) == US_EINVAL, "case");
    CHECK(us_targets_parse("q_projx", &m, &e) == US_EINVAL, "prefix match");
    CHECK(us_targets_parse(NULL, &m, &e) == US_EINVAL, "null");
    for (int i = 0; i < US_T_COUNT; i++) {
        CHECK(us_targets_parse(us_target_name(i), &m, &e) == US_OK && m == 1u << i, "%s", us_target_name(i));
    }
    CHECK(strcmp(us_target_name(US_T_COUNT), "?") == 0 && strcmp(us_target_name(-1), "?") == 0, "bad name");
}

TEST(adapter_names_and_scaling) {
    char buf[200];
    us_adapter_tensor_name(buf, sizeof buf, 3, US_T_Q, 0);
    CHECK(strcmp(buf, "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight") == 0, "%s", buf);
    us_adapter_tensor_name(buf, sizeof buf, 12, US_T_DOWN, 1);
    CHECK(strcmp(buf, "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight") == 0, "%s", buf);
    us_lora_config c = {.r = 8, .alpha = 16};
    CHECK(us_lora_scaling(&c) == 2.0, "scaling");
    c.rslora = true;
    CHECK(fabs(us_lora_scaling(&c) - 16.0 / sqrt(8.0)) < 1e-12, "rslora");
    c.r = 0;
    CHECK(us_lora_scaling(&c) == 0.0, "r 0");
}

/* Reads one tensor through the adapter API and compares it with the raw F32 bytes of the file. */
static int check_fixture_tensor(us_adapter *a, const char *file_bytes, int layer, int target, int is_b, int64_t rows,
                                int64_t cols, char *why, size_t cap) {
    static float got[160 * 64];
    us_err e;
    if (us_adapter_read(a, layer, target, is_b, rows, cols, got, &e) != US_OK) {
        snprintf(why, cap, "%s", e.msg);
        return 0;
    }
    char name[200], dt[8];
    us_adapter_tensor_name(name, sizeof name, layer, target, is_b);
    size_t nb;
    const unsigned char *p = tio_raw_tensor(file_bytes, name, dt, &nb);
    if (!p || strcmp(dt, "F32") != 0 || nb != (size_t)(rows * cols) * 4) {
        snprintf(why, cap, "%s: raw lookup failed", name);
        return 0;
    }
    int nonzero = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        float v;
        memcpy(&v, p + 4 * i, 4);
        if (v != got[i]) {
            snprintf(why, cap, "%s[%lld]: %g vs %g", name, (long long)i, got[i], v);
            return 0;
        }
        nonzero += v != 0;
    }
    if (!nonzero) {
        snprintf(why, cap, "%s: all zero", name);
        return 0;
    }
    return 1;
}

TEST(adapter_fixtures) {
    us_adapter *a;
    us_err e;
    char why[1200];
    CHECK(us_adapter_open(FIXTURES "/llama_silu_gqa_tied/adapter_init", &a, &e) == US_OK, "%s", e.msg);
    const us_lora_config *c = us_adapter_config(a);
    CHECK(c->r == 8 && c->alpha == 16.0 && !c->rslora && c->targets == 0x7f, "config r=%d alpha=%g t=%x", c->r,
          c->alpha, c->targets);
    char *bytes = tio_slurp(FIXTURES "/llama_silu_gqa_tied/adapter_init/adapter_model.safetensors", NULL);
    CHECK(bytes, "slurp");
    /* hidden 64, 4 heads x 16, 2 kv heads -> k/v out 32, inter 160; init weights are non-zero A and B */
    int ok = check_fixture_tensor(a, bytes, 0, US_T_Q, 0, 8, 64, why, sizeof why) &&
             check_fixture_tensor(a, bytes, 1, US_T_K, 1, 32, 8, why, sizeof why) &&
             check_fixture_tensor(a, bytes, 1, US_T_DOWN, 0, 8, 160, why, sizeof why) &&
             check_fixture_tensor(a, bytes, 0, US_T_UP, 1, 160, 8, why, sizeof why);
    free(bytes);
    static float buf[64 * 160];
    us_status st = us_adapter_read(a, 0, US_T_Q, 0, 8, 32, buf, &e);
    int shape_err = st == US_EFORMAT && tio_has(e.msg, "adapter_init/adapter_model.safetensors") &&
                    tio_has(e.msg, "layers.0.self_attn.q_proj.lora_A.weight") && tio_has(e.msg, "[8, 64]") &&
                    tio_has(e.msg, "expected [8, 32]");
    char msg1[1024];
    snprintf(msg1, sizeof msg1, "%s", e.msg);
    st = us_adapter_read(a, 2, US_T_Q, 0, 8, 64, buf, &e);
    int missing = st == US_EFORMAT && tio_has(e.msg, "layers.2.self_attn.q_proj.lora_A") && tio_has(e.msg, "not found");
    st = us_adapter_read(a, 0, 9, 0, 8, 64, buf, &e);
    int badt = st == US_EINVAL;
    us_adapter_close(a);
    CHECK(ok, "%s", why);
    CHECK(shape_err, "%s", msg1);
    CHECK(missing, "%s", e.msg);
    CHECK(badt, "invalid target accepted");

    CHECK(us_adapter_open(FIXTURES "/mistral_mlp/adapter_init", &a, &e) == US_OK, "%s", e.msg);
    c = us_adapter_config(a);
    CHECK(c->targets == ((1u << US_T_GATE) | (1u << US_T_UP) | (1u << US_T_DOWN)), "mistral targets %x", c->targets);
    us_adapter_close(a);

    CHECK(us_adapter_open(FIXTURES "/qwen2_bias_bf16/adapter_init", &a, &e) == US_OK, "%s", e.msg);
    c = us_adapter_config(a);
    CHECK(c->r == 4 && c->targets == ((1u << US_T_Q) | (1u << US_T_V) | (1u << US_T_O) | (1u << US_T_DOWN)),
          "qwen2 r=%d targets %x", c->r, c->targets);
    /* qwen2: one kv head of 16 -> v_proj out 16 */
    st = us_adapter_read(a, 1, US_T_V, 1, 16, 4, buf, &e);
    us_status st2 = us_adapter_read(a, 0, US_T_K, 0, 4, 64, buf, &e);
    us_adapter_close(a);
    CHECK(st == US_OK, "v_proj B");
    CHECK(st2 == US_EFORMAT && tio_has(e.msg, "k_proj"), "%s", e.msg);

    const char *all[] = {"llama_relu_f16_sharded/adapter_init", "llama_relu_f16_sharded/adapter_final",
                         "llama_silu_gqa_tied/adapter_final", "mistral_mlp/adapter_final",
                         "qwen2_bias_bf16/adapter_final"};
    for (int i = 0; i < 5; i++) {
        char p[512];
        snprintf(p, sizeof p, FIXTURES "/%s", all[i]);
        CHECK(us_adapter_open(p, &a, &e) == US_OK, "%s: %s", p, e.msg);
        us_adapter_close(a);
    }
    us_adapter_close(NULL);
}

static void fill(float *x, size_t n, float base) {
    for (size_t i = 0; i < n; i++) x[i] = base + 0.001f * (float)i - 0.37f * (float)(i % 7);
}

TEST(adapter_save_roundtrip) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/out/nested/adapter", us_test_tmpdir());
    enum { R = 4, IN = 24, OUT_Q = 24, OUT_V = 8 };
    static float A[2][2][R * IN], B[2][2][OUT_Q * R];
    us_adapter_pair pairs[4];
    int k = 0;
    for (int l = 0; l < 2; l++)
        for (int t = 0; t < 2; t++) {
            int target = t ? US_T_V : US_T_Q;
            int64_t out = t ? OUT_V : OUT_Q;
            fill(A[l][t], R * IN, (float)(l * 10 + t));
            fill(B[l][t], (size_t)out * R, (float)(l * 10 + t) + 0.5f);
            pairs[k++] = (us_adapter_pair){l, target, IN, out, A[l][t], B[l][t]};
        }
    us_lora_config c = {.r = R, .alpha = 32, .rslora = true, .targets = (1u << US_T_V) | (1u << US_T_Q)};
    us_err e;
    CHECK(us_adapter_save(dir, &c, "org/base-model", pairs, 4, &e) == US_OK, "%s", e.msg);
    /* saving again over an existing adapter works too */
    CHECK(us_adapter_save(dir, &c, "org/base-model", pairs, 4, &e) == US_OK, "%s", e.msg);
    CHECK(tio_count_tmp(dir) == 0, "temporary files left");
    us_adapter *a;
    CHECK(us_adapter_open(dir, &a, &e) == US_OK, "%s", e.msg);
    const us_lora_config *rc = us_adapter_config(a);
    CHECK(rc->r == R && rc->alpha == 32 && rc->rslora && rc->targets == c.targets, "config");
    static float got[OUT_Q * IN];
    int bad = -1;
    for (int i = 0; i < 4 && bad < 0; i++) {
        const us_adapter_pair *p = &pairs[i];
        if (us_adapter_read(a, p->layer, p->target, 0, R, p->in, got, &e) != US_OK ||
            memcmp(got, p->A, sizeof(float) * R * (size_t)p->in) != 0)
            bad = i;
        if (us_adapter_read(a, p->layer, p->target, 1, p->out, R, got, &e) != US_OK ||
            memcmp(got, p->B, sizeof(float) * R * (size_t)p->out) != 0)
            bad = 10 + i;
    }
    us_adapter_close(a);
    CHECK(bad < 0, "pair %d differs: %s", bad, e.msg);

    /* the config carries what PEFT's from_pretrained needs */
    char path[1100];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = tio_slurp(path, NULL);
    CHECK(text, "read config");
    cJSON *j = cJSON_Parse(text);
    free(text);
    CHECK(j, "config is not JSON");
    const cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    int good = cJSON_GetArraySize(tm) == 2 && strcmp(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj") == 0 &&
               strcmp(cJSON_GetArrayItem(tm, 1)->valuestring, "v_proj") == 0;
    good = good && strcmp(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA") == 0;
    good = good && strcmp(cJSON_GetObjectItem(j, "task_type")->valuestring, "CAUSAL_LM") == 0;
    good = good && strcmp(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring, "org/base-model") == 0;
    good = good && cJSON_GetObjectItem(j, "r")->valuedouble == R;
    good = good && cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 32;
    good = good && cJSON_GetObjectItem(j, "lora_dropout")->valuedouble == 0;
    good = good && cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora"));
    good = good && strcmp(cJSON_GetObjectItem(j, "bias")->valuestring, "none") == 0;
    good = good && cJSON_IsFalse(cJSON_GetObjectItem(j, "fan_in_fan_out"));
    good = good && cJSON_IsTrue(cJSON_GetObjectItem(j, "init_lora_weights"));
    good = good && cJSON_IsTrue(cJSON_GetObjectItem(j, "inference_mode"));
    good = good && cJSON_IsFalse(cJSON_GetObjectItem(j, "use_dora"));
    good = good && cJSON_IsNull(cJSON_GetObjectItem(j, "modules_to_save"));
    good = good && cJSON_IsNull(cJSON_GetObjectItem(j, "layers_to_transform"));
    good = good && cJSON_IsNull(cJSON_GetObjectItem(j, "revision"));
    good = good && cJSON_IsObject(cJSON_GetObjectItem(j, "rank_pattern")) &&
           !cJSON_GetObjectItem(j, "rank_pattern")->child;
    good = good && cJSON_IsObject(cJSON_GetObjectItem(j, "alpha_pattern")) &&
           !cJSON_GetObjectItem(j, "alpha_pattern")->child;
    good = good && strcmp(cJSON_GetObjectItem(j, "peft_version")->valuestring, "0.21.0") == 0;
    cJSON_Delete(j);
    CHECK(good, "saved config is missing or wrong on a PEFT key");

    /* weights are F32 with PEFT's metadata */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    us_st_file *f;
    CHECK(us_st_open(path, &f, &e) == US_OK, "%s", e.msg);
    int allf32 = us_st_count(f) == 8;
    for (size_t i = 0; i < us_st_count(f); i++) allf32 = allf32 && us_st_at(f, i)->dtype == US_DT_F32;
    us_st_close(f);
    CHECK(allf32, "weights not 8 F32 tensors");
    text = tio_slurp(path, NULL);
    int has_meta = text && strstr(text + 8, "\"__metadata__\":{\"format\":\"pt\"}") != NULL;
    free(text);
    CHECK(has_meta, "no format=pt metadata");

    /* base_model NULL is written as null */
    c.rslora = false;
    CHECK(us_adapter_save(dir, &c, NULL, pairs, 4, &e) == US_OK, "%s", e.msg);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    text = tio_slurp(path, NULL);
    j = text ? cJSON_Parse(text) : NULL;
    free(text);
    int isnull = j && cJSON_IsNull(cJSON_GetObjectItem(j, "base_model_name_or_path")) &&
                 cJSON_IsFalse(cJSON_GetObjectItem(j, "use_rslora"));
    cJSON_Delete(j);
    CHECK(isnull, "base model null");
}

TEST(adapter_save_bad_args) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/ad", us_test_tmpdir());
    float A[2 * 4] = {0}, B[4 * 2] = {0};
    us_adapter_pair good = {0, US_T_Q, 4, 4, A, B};
    us_lora_config c = {.r = 2, .alpha = 4, .targets = 1u << US_T_Q};
    us_err e;
    struct {
        us_lora_config c;
        us_adapter_pair p[2];
        size_t n;
        us_status want;
        const char *needle;
    } cases[] = {
        {{.r = 0, .alpha = 4, .targets = 1}, {good}, 1, US_EINVAL, "rank 0"},
        {{.r = 2, .alpha = 0, .targets = 1}, {good}, 1, US_EINVAL, "alpha"},
        {{.r = 2, .alpha = NAN, .targets = 1}, {good}, 1, US_EINVAL, "alpha"},
        {{.r = 2, .alpha = 4, .targets = 0}, {good}, 1, US_EINVAL, "target mask"},
        {{.r = 2, .alpha = 4, .targets = 0x80}, {good}, 1, US_EINVAL, "target mask"},
        {c, {good}, 0, US_EINVAL, "no LoRA weights"},
        {c, {{0, US_T_V, 4, 4, A, B}}, 1, US_EINVAL, "not in the target set"},
        {c, {{0, 99, 4, 4, A, B}}, 1, US_EINVAL, "not in the target set"},
        {c, {{-1, US_T_Q, 4, 4, A, B}}, 1, US_EINVAL, "invalid layer -1"},
        {c, {{0, US_T_Q, 0, 4, A, B}}, 1, US_EINVAL, "invalid sizes"},
        {c, {{0, US_T_Q, 4, 4, NULL, B}}, 1, US_EINVAL, "no data"},
        {c, {good, good}, 2, US_EINVAL, "duplicate tensor name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        us_status st = us_adapter_save(dir, &cases[i].c, "b", cases[i].p, cases[i].n, &e);
        CHECK(st == cases[i].want && tio_has(e.msg, dir) && tio_has(e.msg, cases[i].needle), "case %zu: %d %s", i, st,
              e.msg);
    }
    CHECK(us_adapter_save(NULL, &c, "b", &good, 1, &e) == US_EINVAL, "null dir");
    /* a directory that cannot be created: its parent is a regular file */
    char file[1100], under[1200];
    snprintf(file, sizeof file, "%s/plainfile", us_test_tmpdir());
    CHECK(us_test_write(file, "x", 1) == 0, "write");
    snprintf(under, sizeof under, "%s/adapter", file);
    CHECK(us_adapter_save(under, &c, "b", &good, 1, &e) == US_EIO && tio_has(e.msg, under) &&
              tio_has(e.msg, "not a directory"),
          "%s", e.msg);
    CHECK(us_adapter_save(file, &c, "b", &good, 1, &e) == US_EIO && tio_has(e.msg, "not a directory"), "%s", e.msg);
    /* nothing half-written from the failures: the successful save still opens */
    CHECK(us_adapter_save(dir, &c, "b", &good, 1, &e) == US_OK, "%s", e.msg);
    us_adapter *a;
    CHECK(us_adapter_open(dir, &a, &e) == US_OK, "%s", e.msg);
    us_adapter_close(a);
}

/* ---------------------------------------------------------------- hostile adapters */

static const char base_cfg[] =
    "\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\", \"v_proj\"], "
    "\"bias\": \"none\", \"use_dora\": false, \"fan_in_fan_out\": false, \"rank_pattern\": {}, "
    "\"alpha_pattern\": {}, \"layers_to_transform\": null, \"modules_to_save\": null, \"use_rslora\": false";

/* Writes DIR/adapter_config.json = {extra, base} (extra keys win: cJSON takes the first). */
static int write_cfg(const char *dir, const char *extra) {
    char path[1100], json[2048];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(json, sizeof json, "{%s%s%s}", extra ? extra : "", extra && *extra ? ", " : "", base_cfg);
    return us_test_write(path, json, strlen(json));
}

/* Writes a layer-0 q_proj/v_proj adapter with r = 2, in = 4, out_q = 4, out_v = 2. */
static int write_good_weights(const char *dir) {
    static float A[8], B[8];
    for (int i = 0; i < 8; i++) A[i] = (float)i, B[i] = -(float)i;
    char path[1100], nq[200], nqb[200], nv[200], nvb[200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    us_adapter_tensor_name(nq, sizeof nq, 0, US_T_Q, 0);
    us_adapter_tensor_name(nqb, sizeof nqb, 0, US_T_Q, 1);
    us_adapter_tensor_name(nv, sizeof nv, 0, US_T_V, 0);
    us_adapter_tensor_name(nvb, sizeof nvb, 0, US_T_V, 1);
    us_st_write_tensor w[4] = {
        {.name = nq, .dtype = US_DT_F32, .ndim = 2, .shape = {2, 4}, .data = A},
        {.name = nqb, .dtype = US_DT_F32, .ndim = 2, .shape = {4, 2}, .data = B},
        {.name = nv, .dtype = US_DT_F32, .ndim = 2, .shape = {2, 4}, .data = A},
        {.name = nvb, .dtype = US_DT_F32, .ndim = 2, .shape = {2, 2}, .data = B},
    };
    us_err e;
    return us_st_write(path, w, 4, NULL, 0, &e) == US_OK ? 0 : -1;
}

typedef struct {
    const char *extra;
    us_status want;
    const char *n1, *n2;
} ad_case;

static const ad_case ad_cases[] = {
    {"\"peft_type\": \"PREFIX_TUNING\"", US_EUNSUPPORTED, "\"peft_type\"", "PREFIX_TUNING"},
    {"\"peft_type\": 1", US_EFORMAT, "\"peft_type\"", "must be a string"},
    {"\"peft_type\": null", US_EFORMAT, "missing required key \"peft_type\"", ""},
    {"\"r\": null", US_EFORMAT, "missing required key \"r\"", ""},
    {"\"r\": 0", US_EFORMAT, "\"r\"", "integer in [1, 65536]"},
    {"\"r\": 2.5", US_EFORMAT, "\"r\"", "integer"},
    {"\"r\": \"2\"", US_EFORMAT, "\"r\"", "integer"},
    {"\"lora_alpha\": null", US_EFORMAT, "missing required key \"lora_alpha\"", ""},
    {"\"lora_alpha\": \"4\"", US_EFORMAT, "\"lora_alpha\"", "positive number"},
    {"\"lora_alpha\": -4", US_EFORMAT, "\"lora_alpha\"", "positive number"},
    {"\"use_rslora\": \"yes\"", US_EFORMAT, "\"use_rslora\"", "true or false"},
    {"\"use_dora\": true", US_EUNSUPPORTED, "\"use_dora\"", "DoRA"},
    {"\"fan_in_fan_out\": true", US_EUNSUPPORTED, "\"fan_in_fan_out\"", "not supported"},
    {"\"lora_bias\": true", US_EUNSUPPORTED, "\"lora_bias\"", "not supported"},
    {"\"bias\": \"all\"", US_EUNSUPPORTED, "\"bias\"", "\"all\""},
    {"\"bias\": false", US_EFORMAT, "\"bias\"", "must be a string"},
    {"\"rank_pattern\": {\"q_proj\": 8}", US_EUNSUPPORTED, "\"rank_pattern\"", "not supported"},
    {"\"alpha_pattern\": {\"v_proj\": 2}", US_EUNSUPPORTED, "\"alpha_pattern\"", "not supported"},
    {"\"layers_to_transform\": [0]", US_EUNSUPPORTED, "\"layers_to_transform\"", "not supported"},
    {"\"layers_to_transform\": 0", US_EUNSUPPORTED, "\"layers_to_transform\"", "not supported"},
    {"\"modules_to_save\": [\"lm_head\"]", US_EUNSUPPORTED, "\"modules_to_save\"", "not supported"},
    {"\"target_modules\": null", US_EFORMAT, "missing required key \"target_modules\"", ""},
    {"\"target_modules\": \".*\\\\.(q|v)_proj\"", US_EUNSUPPORTED, "\"target_modules\"", "regular expressions"},
    {"\"target_modules\": [\"q_proj\", \"embed_tokens\"]", US_EUNSUPPORTED, "\"target_modules\"", "embed_tokens"},
    {"\"target_modules\": []", US_EFORMAT, "\"target_modules\"", "empty"},
    {"\"target_modules\": 5", US_EFORMAT, "\"target_modules\"", "a number"},
    {"\"target_modules\": [\"q_proj\", 1]", US_EFORMAT, "\"target_modules\"", "a number"},
    {"\"target_modules\": \"q_proj\"", US_EFORMAT, "v_proj", "target_modules does not list"},
};

TEST(adapter_bad_config) {
    const char *dir = us_test_tmpdir();
    CHECK(write_good_weights(dir) == 0, "weights");
    CHECK(write_cfg(dir, NULL) == 0, "cfg");
    us_adapter *a;
    us_err e;
    CHECK(us_adapter_open(dir, &a, &e) == US_OK, "baseline: %s", e.msg);
    us_adapter_close(a);
    char cfgp[1100], stp[1100];
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", dir);
    snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
    for (size_t i = 0; i < sizeof ad_cases / sizeof ad_cases[0]; i++) {
        const ad_case *k = &ad_cases[i];
        CHECK(write_cfg(dir, k->extra) == 0, "cfg");
        a = (us_adapter *)1;
        us_status st = us_adapter_open(dir, &a, &e);
        CHECK(st == k->want && a == NULL, "case %zu (%s): status %d: %s", i, k->extra, st, e.msg);
        const char *file = strstr(k->n2, "target_modules does not list") ? stp : cfgp;
        CHECK(tio_has(e.msg, file) && tio_has(e.msg, k->n1) && tio_has(e.msg, k->n2), "case %zu: %s", i, e.msg);
    }
    /* malformed and non-object configs */
    CHECK(us_test_write(cfgp, "{\"r\": 2,\n\"lora_alpha\": }", 25) == 0, "w");
    CHECK(us_adapter_open(dir, &a, &e) == US_EFORMAT && tio_has(e.msg, cfgp) && tio_has(e.msg, "line 2"), "%s", e.msg);
    CHECK(us_test_write(cfgp, "[]", 2) == 0, "w");
    CHECK(us_adapter_open(dir, &a, &e) == US_EFORMAT && tio_has(e.msg, cfgp) && tio_has(e.msg, "JSON object"), "%s",
          e.msg);
    /* missing pieces */
    CHECK(remove(cfgp) == 0, "rm");
    CHECK(us_adapter_open(dir, &a, &e) == US_EIO && tio_has(e.msg, cfgp), "%s", e.msg);
    CHECK(write_cfg(dir, NULL) == 0 && remove(stp) == 0, "rm st");
    CHECK(us_adapter_open(dir, &a, &e) == US_EIO && tio_has(e.msg, stp), "%s", e.msg);
    char nodir[1100];
    snprintf(nodir, sizeof nodir, "%s/absent", dir);
    CHECK(us_adapter_open(nodir, &a, &e) == US_EIO && tio_has(e.msg, nodir), "%s", e.msg);
    CHECK(us_adapter_open(cfgp, &a, &e) == US_EIO && tio_has(e.msg, "not a directory"), "%s", e.msg);
    CHECK(us_adapter_open(NULL, &a, &e) == US_EINVAL, "null");
}

TEST(adapter_bad_tensors) {
    const char *dir = us_test_tmpdir();
    CHECK(write_cfg(dir, NULL) == 0, "cfg");
    char stp[1100];
    snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
    const char *q = "base_model.model.model.layers.0.self_attn.q_proj.lora_";
    char h[2048];
    struct {
        const char *fmt; /* header with %s = q-prefix where used */
        size_t data;
        us_status want;
        const char *n1, *n2;
    } cases[] = {
        {"{\"%sA.weight\": {\"dtype\": \"F32\", \"shape\": [2, 4], \"data_offsets\": [0, 32]}}", 32, US_EFORMAT,
         "q_proj.lora_A.weight", "no matching"},
        {"{\"%sA.weight\": {\"dtype\": \"F32\", \"shape\": [3, 4], \"data_offsets\": [0, 48]}}", 48, US_EFORMAT,
         "q_proj.lora_A.weight", "[r, in] with r = 2"},
        {"{\"%sB.weight\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", 32, US_EFORMAT,
         "q_proj.lora_B.weight", "[out, r]"},
        {"{\"%sB.weight\": {\"dtype\": \"F32\", \"shape\": [4, 2, 1], \"data_offsets\": [0, 32]}}", 32, US_EFORMAT,
         "q_proj.lora_B.weight", "3 dims"},
        {"{\"%sA.weight\": {\"dtype\": \"I32\", \"shape\": [2, 4], \"data_offsets\": [0, 32]}}", 32, US_EUNSUPPORTED,
         "q_proj.lora_A.weight", "dtype I32"},
        {"{\"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight\": {\"dtype\": \"F32\", \"shape\": [2, 4], "
         "\"data_offsets\": [0, 32]}}%s",
         32, US_EFORMAT, "k_proj", "target_modules does not list"},
        {"{\"base_model.model.lm_head.weight\": {\"dtype\": \"F32\", \"shape\": [2, 4], \"data_offsets\": [0, 32]}}%s",
         32, US_EUNSUPPORTED, "lm_head.weight", "unexpected tensor"},
        {"{\"base_model.model.model.layers.0.mlp.q_proj.lora_A.weight\": {\"dtype\": \"F32\", \"shape\": [2, 4], "
         "\"data_offsets\": [0, 32]}}%s",
         32, US_EUNSUPPORTED, "mlp.q_proj", "unexpected tensor"},
        {"{\"base_model.model.model.layers.00.self_attn.q_proj.lora_A.weight\": {\"dtype\": \"F32\", \"shape\": [2, "
         "4], \"data_offsets\": [0, 32]}}%s",
         32, US_EUNSUPPORTED, "layers.00", "unexpected tensor"},
        {"{\"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector\": {\"dtype\": \"F32\", "
         "\"shape\": [4], \"data_offsets\": [0, 16]}}%s",
         16, US_EUNSUPPORTED, "lora_magnitude_vector", "unexpected tensor"},
        {"{\"__metadata__\": {\"format\": \"pt\"}}%s", 0, US_EFORMAT, "no LoRA tensors", ""},
        {"{\"%sA.weight\": {\"dtype\": \"F32\", \"shape\": [2, 4], \"data_offsets\": [0, 64]}}", 64, US_EFORMAT,
         "q_proj.lora_A.weight", "needs 32 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(h, sizeof h, cases[i].fmt, strstr(cases[i].fmt, "%sA") || strstr(cases[i].fmt, "%sB") ? q : "");
        CHECK(tio_write_st(stp, h, cases[i].data) == 0, "write");
        us_adapter *a = (us_adapter *)1;
        us_err e;
        us_status st = us_adapter_open(dir, &a, &e);
        CHECK(st == cases[i].want && a == NULL, "case %zu: status %d: %s", i, st, e.msg);
        CHECK(tio_has(e.msg, stp) && tio_has(e.msg, cases[i].n1) && tio_has(e.msg, cases[i].n2), "case %zu: %s", i,
              e.msg);
    }
}

TEST(adapter_half_precision) {
    /* PEFT adapters saved in BF16/F16 read back as f32 */
    const char *dir = us_test_tmpdir();
    CHECK(write_cfg(dir, "\"target_modules\": \"q_proj\"") == 0, "cfg");
    uint16_t a16[8], b16[8];
    float ref_a[8], ref_b[8];
    for (int i = 0; i < 8; i++) {
        ref_a[i] = 0.5f * (float)i - 1.0f;
        ref_b[i] = (float)i * 0.25f;
        a16[i] = us_f32_to_bf16(ref_a[i]);
        b16[i] = us_f32_to_f16(ref_b[i]);
    }
    char path[1100], na[200], nb[200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    us_adapter_tensor_name(na, sizeof na, 0, US_T_Q, 0);
    us_adapter_tensor_name(nb, sizeof nb, 0, US_T_Q, 1);
    us_st_write_tensor w[2] = {{.name = na, .dtype = US_DT_BF16, .ndim = 2, .shape = {2, 4}, .data = a16},
                               {.name = nb, .dtype = US_DT_F16, .ndim = 2, .shape = {4, 2}, .data = b16}};
    us_err e;
    CHECK(us_st_write(path, w, 2, NULL, 0, &e) == US_OK, "%s", e.msg);
    us_adapter *a;
    CHECK(us_adapter_open(dir, &a, &e) == US_OK, "%s", e.msg);
    float ga[8], gb[8];
    us_status s1 = us_adapter_read(a, 0, US_T_Q, 0, 2, 4, ga, &e);
    us_status s2 = us_adapter_read(a, 0, US_T_Q, 1, 4, 2, gb, &e);
    us_adapter_close(a);
    CHECK(s1 == US_OK && s2 == US_OK, "%s", e.msg);
    for (int i = 0; i < 8; i++) CHECK(ga[i] == ref_a[i] && gb[i] == ref_b[i], "value %d", i);
}
