/* test_safetensors.c — the safetensors reader, model directories and the atomic writer:
 * round trips for every dtype, the committed fixtures cross-checked against a decoding done here,
 * and one test per rejected input asserting the status and that the message names the file and
 * the problem. */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"
#include "test_io_util.h"

static char *tpath(const char *name) {
    static char buf[8][1024];
    static int k;
    char *b = buf[k++ & 7];
    snprintf(b, 1024, "%s/%s", us_test_tmpdir(), name);
    return b;
}

TEST(safetensors_roundtrip_all_dtypes) {
    const char *path = tpath("all.safetensors");
    uint8_t raw[US_DT_COUNT][48];
    us_st_write_tensor w[US_DT_COUNT + 2];
    char names[US_DT_COUNT][32];
    for (int d = 0; d < US_DT_COUNT; d++) {
        for (int i = 0; i < 48; i++) raw[d][i] = (uint8_t)(d * 31 + i * 7);
        size_t es = us_dtype_size((us_dtype)d);
        snprintf(names[d], sizeof names[d], "t_%s", us_dtype_name((us_dtype)d));
        w[d] = (us_st_write_tensor){.name = names[d], .dtype = (us_dtype)d, .ndim = 2, .data = raw[d]};
        w[d].shape[0] = 2;
        w[d].shape[1] = (int64_t)(48 / es / 2);
    }
    /* F32 with genuine values, so the conversion path can be checked too */
    float f32[12];
    for (int i = 0; i < 12; i++) f32[i] = (float)i * 0.25f - 1.0f;
    w[US_DT_F32].data = f32;
    double f64[6] = {1.5, -2.25, 3.0, 1e-3, 0.0, 42.0};
    w[US_DT_F64].data = f64;
    w[US_DT_F64].shape[0] = 2;
    w[US_DT_F64].shape[1] = 3;
    float scalar = 7.5f;
    w[US_DT_COUNT] = (us_st_write_tensor){.name = "a_scalar", .dtype = US_DT_F32, .ndim = 0, .data = &scalar};
    w[US_DT_COUNT + 1] = (us_st_write_tensor){.name = "b_empty", .dtype = US_DT_F16, .ndim = 2, .data = NULL};
    w[US_DT_COUNT + 1].shape[0] = 0;
    w[US_DT_COUNT + 1].shape[1] = 3;
    const char *meta[] = {"format", "pt", "note", "\"quoted\" \\ text"};
    us_err e = {{0}};
    us_status st = us_st_write(path, w, US_DT_COUNT + 2, meta, 2, &e);
    CHECK(st == US_OK, "write: %s", e.msg);
    CHECK(tio_count_tmp(us_test_tmpdir()) == 0, "temporary file left behind");

    /* header length keeps the data 8-byte aligned and is padded with spaces */
    size_t flen;
    char *bytes = tio_slurp(path, &flen);
    CHECK(bytes, "cannot read back");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)bytes[i];
    int aligned = (8 + hl) % 8 == 0, last = bytes[8 + hl - 1];
    free(bytes);
    CHECK(aligned, "data start %llu not 8-byte aligned", (unsigned long long)(8 + hl));
    CHECK(last == ' ' || last == '}', "header ends with %d", last);

    us_st_file *f;
    st = us_st_open(path, &f, &e);
    CHECK(st == US_OK, "open: %s", e.msg);
    CHECK(us_st_count(f) == US_DT_COUNT + 2, "count %zu", us_st_count(f));
    CHECK(strcmp(us_st_path(f), path) == 0, "path");
    for (size_t i = 1; i < us_st_count(f); i++)
        CHECK(strcmp(us_st_at(f, i - 1)->name, us_st_at(f, i)->name) < 0, "not sorted at %zu", i);
    CHECK(us_st_at(f, us_st_count(f)) == NULL, "at past end");
    for (int d = 0; d < US_DT_COUNT; d++) {
        const us_st_tensor *tn = us_st_find(f, names[d]);
        CHECK(tn, "missing %s", names[d]);
        CHECK(tn->dtype == (us_dtype)d && tn->ndim == 2 && tn->shape[0] == w[d].shape[0] &&
                  tn->shape[1] == w[d].shape[1],
              "%s metadata", names[d]);
        CHECK(tn->numel == w[d].shape[0] * w[d].shape[1], "%s numel", names[d]);
        CHECK(tn->nbytes == (size_t)tn->numel * us_dtype_size((us_dtype)d), "%s nbytes", names[d]);
        CHECK(memcmp(tn->data, w[d].data, tn->nbytes) == 0, "%s bytes differ", names[d]);
    }
    const us_st_tensor *sc = us_st_find(f, "a_scalar");
    CHECK(sc && sc->ndim == 0 && sc->numel == 1 && memcmp(sc->data, &scalar, 4) == 0, "scalar");
    const us_st_tensor *em = us_st_find(f, "b_empty");
    CHECK(em && em->numel == 0 && em->nbytes == 0, "empty tensor");
    CHECK(us_st_find(f, "nope") == NULL, "found a missing tensor");
    us_st_close(f);

    /* the file itself opens as a model, and floating tensors convert */
    us_st_model *m;
    st = us_st_model_open(path, &m, &e);
    CHECK(st == US_OK, "model open: %s", e.msg);
    float out[64];
    int64_t s23[2] = {2, 3}, s26[2] = {2, 6}, s212[2] = {2, 12};
    CHECK(us_st_model_read_f32(m, "t_F64", 2, s23, out, &e) == US_OK, "%s", e.msg);
    for (int i = 0; i < 6; i++) CHECK(out[i] == (float)f64[i], "F64[%d] %g", i, out[i]);
    CHECK(us_st_model_read_f32(m, "t_F32", 2, s26, out, &e) == US_OK, "%s", e.msg);
    for (int i = 0; i < 12; i++) CHECK(out[i] == f32[i], "F32[%d]", i);
    CHECK(us_st_model_read_f32(m, "t_BF16", 2, s212, out, &e) == US_OK, "%s", e.msg);
    for (int i = 0; i < 24; i++) {
        uint16_t h = (uint16_t)(raw[US_DT_BF16][2 * i] | raw[US_DT_BF16][2 * i + 1] << 8);
        CHECK(out[i] == (float)tio_bf16(h) || (out[i] != out[i]), "BF16[%d]", i);
    }
    CHECK(us_st_model_read_f32(m, "t_F16", 2, s212, out, &e) == US_OK, "%s", e.msg);
    for (int i = 0; i < 24; i++) {
        uint16_t h = (uint16_t)(raw[US_DT_F16][2 * i] | raw[US_DT_F16][2 * i + 1] << 8);
        double ref = tio_f16(h);
        CHECK(out[i] == (float)ref || (ref != ref && out[i] != out[i]), "F16[%d] %g vs %g", i, out[i], ref);
    }
    /* integer dtypes are refused by the f32 reader, naming file and tensor */
    st = us_st_model_read_f32(m, "t_I32", 2, s26, out, &e);
    CHECK(st == US_EUNSUPPORTED && tio_has(e.msg, path) && tio_has(e.msg, "t_I32") && tio_has(e.msg, "I32"), "%s",
          e.msg);
    /* wrong shape and missing tensor */
    st = us_st_model_read_f32(m, "t_F32", 2, s23, out, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, path) && tio_has(e.msg, "t_F32") && tio_has(e.msg, "[2, 6]") &&
              tio_has(e.msg, "expected [2, 3]"),
          "%s", e.msg);
    st = us_st_model_read_f32(m, "t_F32", 1, s26, out, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, "expected [2]"), "%s", e.msg);
    st = us_st_model_read_f32(m, "nope", 1, s26, out, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, path) && tio_has(e.msg, "nope") && tio_has(e.msg, "not found"), "%s",
          e.msg);
    const us_st_tensor *g;
    CHECK(us_st_model_get(m, "t_U8", 2, (int64_t[]){2, 24}, &g, &e) == US_OK && g->dtype == US_DT_U8, "%s", e.msg);
    us_st_model_close(m);
}

TEST(safetensors_model_dir_single) {
    const char *dir = us_test_tmpdir();
    float a[4] = {1, 2, 3, 4};
    us_st_write_tensor w = {.name = "x", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = a};
    us_err e;
    CHECK(us_st_write(tpath("model.safetensors"), &w, 1, NULL, 0, &e) == US_OK, "%s", e.msg);
    us_st_model *m;
    CHECK(us_st_model_open(dir, &m, &e) == US_OK, "%s", e.msg);
    const char *file = NULL;
    const us_st_tensor *tn = us_st_model_find(m, "x", &file);
    CHECK(tn && file && tio_has(file, "model.safetensors"), "find");
    CHECK(us_st_model_find(m, "y", NULL) == NULL, "found y");
    float out[4];
    CHECK(us_st_model_read_f32(m, "x", 1, (int64_t[]){4}, out, &e) == US_OK && out[3] == 4, "%s", e.msg);
    us_st_model_close(m);
    us_st_model_close(NULL);
    us_st_close(NULL);
}

TEST(safetensors_fixture_qwen2_bf16) {
    const char *dir = FIXTURES "/qwen2_bias_bf16/model";
    us_st_model *m;
    us_err e;
    CHECK(us_st_model_open(dir, &m, &e) == US_OK, "%s", e.msg);
    const char *name = "model.layers.0.self_attn.q_proj.bias";
    const char *file;
    const us_st_tensor *tn = us_st_model_find(m, name, &file);
    CHECK(tn && tn->dtype == US_DT_BF16 && tn->ndim == 1 && tn->shape[0] == 64, "q_proj.bias");
    static float got[64 * 256];
    CHECK(us_st_model_read_f32(m, name, 1, (int64_t[]){64}, got, &e) == US_OK, "%s", e.msg);
    size_t flen, nb = 0;
    char *bytes = tio_slurp(FIXTURES "/qwen2_bias_bf16/model/model.safetensors", &flen);
    CHECK(bytes, "read fixture");
    char dt[8];
    const unsigned char *p = tio_raw_tensor(bytes, name, dt, &nb);
    int ok = p && strcmp(dt, "BF16") == 0 && nb == 128;
    int bad = -1, nonzero = 0;
    for (int i = 0; ok && i < 64; i++)
        if (got[i] != (float)tio_bf16((uint16_t)(p[2 * i] | p[2 * i + 1] << 8))) bad = i;
    /* and the embedding, a bigger 2-D tensor */
    p = tio_raw_tensor(bytes, "model.embed_tokens.weight", dt, &nb);
    int ok2 = p && nb == 256 * 64 * 2;
    CHECK(us_st_model_read_f32(m, "model.embed_tokens.weight", 2, (int64_t[]){256, 64}, got, &e) == US_OK, "%s",
          e.msg);
    int bad2 = -1;
    for (int i = 0; ok2 && i < 256 * 64; i++) {
        double ref = tio_bf16((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        if (got[i] != (float)ref) bad2 = i;
        nonzero += ref != 0;
    }
    free(bytes);
    us_st_model_close(m);
    CHECK(ok && ok2, "independent decoding failed to find the tensors");
    CHECK(bad < 0 && bad2 < 0, "mismatch at %d / %d", bad, bad2);
    CHECK(nonzero > 0, "embedding all zero: fixture not exercised");
}

TEST(safetensors_fixture_sharded_f16) {
    const char *dir = FIXTURES "/llama_relu_f16_sharded/model";
    us_st_model *m;
    us_err e;
    CHECK(us_st_model_open(dir, &m, &e) == US_OK, "%s", e.msg);
    const char *file = NULL;
    const char *name = "model.layers.1.mlp.down_proj.weight";
    const us_st_tensor *tn = us_st_model_find(m, name, &file);
    CHECK(tn && file && tio_has(file, "model-00003-of-00004.safetensors"), "shard of %s: %s", name, file);
    CHECK(tn->dtype == US_DT_F16 && tn->shape[0] == 64 && tn->shape[1] == 160, "shape");
    static float got[64 * 160];
    CHECK(us_st_model_read_f32(m, name, 2, (int64_t[]){64, 160}, got, &e) == US_OK, "%s", e.msg);
    size_t flen, nb = 0;
    char *bytes = tio_slurp(file, &flen);
    CHECK(bytes, "read shard");
    char dt[8];
    const unsigned char *p = tio_raw_tensor(bytes, name, dt, &nb);
    int ok = p && strcmp(dt, "F16") == 0 && nb == 64 * 160 * 2, bad = -1;
    for (int i = 0; ok && i < 64 * 160; i++)
        if (got[i] != (float)tio_f16((uint16_t)(p[2 * i] | p[2 * i + 1] << 8))) bad = i;
    free(bytes);
    /* every tensor in the index resolves; embeddings live in shard 1, lm_head in shard 4 */
    CHECK(us_st_model_find(m, "model.embed_tokens.weight", &file) && tio_has(file, "00001-of"), "embed shard");
    CHECK(us_st_model_find(m, "lm_head.weight", &file) && tio_has(file, "00004-of"), "lm_head shard");
    CHECK(us_st_model_find(m, "model.layers.0.self_attn.o_proj.bias", NULL), "o_proj bias");
    us_st_model_close(m);
    CHECK(ok, "independent decoding failed");
    CHECK(bad < 0, "mismatch at %d", bad);
}

TEST(safetensors_fixture_all_models) {
    const char *dirs[] = {"llama_silu_gqa_tied", "mistral_mlp", "qwen2_bias_bf16", "llama_relu_f16_sharded"};
    for (int i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, FIXTURES "/%s/model", dirs[i]);
        us_st_model *m;
        us_err e;
        CHECK(us_st_model_open(path, &m, &e) == US_OK, "%s: %s", dirs[i], e.msg);
        const us_st_tensor *tn;
        us_status st = us_st_model_get(m, "model.embed_tokens.weight", 2, (int64_t[]){256, 64}, &tn, &e);
        us_st_model_close(m);
        CHECK(st == US_OK, "%s: %s", dirs[i], e.msg);
    }
    /* the other committed safetensors files parse too */
    for (int i = 0; i < 4; i++) {
        const char *files[] = {"logits_step0.safetensors", "grads_step0.safetensors",
                               "adapter_init/adapter_model.safetensors", "adapter_final/adapter_model.safetensors"};
        for (int k = 0; k < 4; k++) {
            char path[512];
            snprintf(path, sizeof path, FIXTURES "/%s/%s", dirs[i], files[k]);
            us_st_file *f;
            us_err e;
            CHECK(us_st_open(path, &f, &e) == US_OK, "%s", e.msg);
            size_t n = us_st_count(f);
            us_st_close(f);
            CHECK(n > 0, "%s: empty", path);
        }
    }
}

/* ---------------------------------------------------------------- hostile files */

typedef struct {
    const char *label;
    const char *header;
    size_t data_len;
    us_status want;
    const char *needle1, *needle2;
} bad_case;

static const bad_case bad_cases[] = {
    {"nonjson", "this is not json", 0, US_EFORMAT, "malformed JSON", "header"},
    {"truncjson", "{\"a\": {\"dtype\": \"F32\"", 0, US_EFORMAT, "malformed JSON", "line 1"},
    {"array", "[1, 2, 3]", 0, US_EFORMAT, "must be a JSON object", "an array"},
    {"trailing", "{}  xx", 0, US_EFORMAT, "unexpected data", "column 5"},
    {"entry_not_obj", "{\"w\": 5}", 0, US_EFORMAT, "tensor w", "must be an object"},
    {"no_dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT, "tensor w", "\"dtype\""},
    {"dtype_num", "{\"w\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT, "tensor w",
     "\"dtype\" must be a string"},
    {"unknown_dtype", "{\"w\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
     US_EUNSUPPORTED, "tensor w", "unknown dtype \"F8_E4M3\""},
    {"no_shape", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, US_EFORMAT, "tensor w", "\"shape\""},
    {"neg_shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT,
     "tensor w", "shape[1] must be a non-negative integer"},
    {"frac_shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT,
     "tensor w", "shape[0]"},
    {"str_shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"4\"], \"data_offsets\": [0, 16]}}", 16, US_EFORMAT,
     "tensor w", "shape[0]"},
    {"overflow_shape",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT,
     "tensor w", "overflows"},
    {"overflow_bytes", "{\"w\": {\"dtype\": \"F64\", \"shape\": [1125899906842624, 4096], \"data_offsets\": [0, 4]}}",
     4, US_EFORMAT, "tensor w", "overflows"},
    {"too_many_dims",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
     US_EUNSUPPORTED, "tensor w", "9 dimensions"},
    {"no_offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, US_EFORMAT, "tensor w", "data_offsets"},
    {"offsets_len3", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8, US_EFORMAT,
     "tensor w", "[begin, end]"},
    {"offsets_neg", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, US_EFORMAT,
     "tensor w", "non-negative"},
    {"end_before_begin", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 8, US_EFORMAT,
     "tensor w", "end before begin"},
    {"out_of_range", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8, US_EFORMAT,
     "tensor w", "exceed the data block of 8 bytes"},
    {"size_mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 16]}}", 16,
     US_EFORMAT, "tensor w", "needs 24 bytes"},
    {"overlap",
     "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
     "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
     12, US_EFORMAT, "tensors a [0, 8] and b [4, 12]", "overlap"},
    {"overlap_same",
     "{\"b\": {\"dtype\": \"I8\", \"shape\": [4], \"data_offsets\": [0, 4]}, "
     "\"a\": {\"dtype\": \"I32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
     4, US_EFORMAT, "overlap", "[0, 4]"},
    {"duplicate",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
     "\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
     8, US_EFORMAT, "duplicate tensor name w", ""},
    {"empty_name", "{\"\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, US_EFORMAT,
     "empty name", ""},
    {"meta_not_obj", "{\"__metadata__\": [\"format\"]}", 0, US_EFORMAT, "__metadata__", "an array"},
    {"meta_value", "{\"__metadata__\": {\"format\": 1}}", 0, US_EFORMAT, "__metadata__ key \"format\"",
     "a number"},
    {"meta_twice", "{\"__metadata__\": {}, \"__metadata__\": {}}", 0, US_EFORMAT, "duplicate __metadata__", ""},
};

TEST(safetensors_bad_headers) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        char name[128];
        snprintf(name, sizeof name, "bad_%s.safetensors", c->label);
        const char *path = tpath(name);
        CHECK(tio_write_st(path, c->header, c->data_len) == 0, "write %s", path);
        us_st_file *f = (us_st_file *)1;
        us_err e = {{0}};
        us_status st = us_st_open(path, &f, &e);
        CHECK(st == c->want, "%s: status %d (%s), want %d", c->label, st, e.msg, c->want);
        CHECK(f == NULL, "%s: handle not cleared", c->label);
        CHECK(tio_has(e.msg, path), "%s: message lacks the file: %s", c->label, e.msg);
        CHECK(tio_has(e.msg, c->needle1) && tio_has(e.msg, c->needle2), "%s: message: %s", c->label, e.msg);
        /* the same file as a model is refused with the same message */
        us_st_model *m = (us_st_model *)1;
        us_err e2;
        st = us_st_model_open(path, &m, &e2);
        CHECK(st == c->want && m == NULL && strcmp(e.msg, e2.msg) == 0, "%s: model open: %s", c->label, e2.msg);
    }
}

TEST(safetensors_bad_files) {
    us_st_file *f;
    us_err e;
    /* missing */
    const char *missing = tpath("missing.safetensors");
    CHECK(us_st_open(missing, &f, &e) == US_EIO && tio_has(e.msg, missing) && tio_has(e.msg, "cannot open"), "%s",
          e.msg);
    /* a directory */
    CHECK(us_st_open(us_test_tmpdir(), &f, &e) == US_EIO && tio_has(e.msg, "not a regular file"), "%s", e.msg);
    /* empty and short files */
    const char *empty = tpath("empty.safetensors");
    CHECK(us_test_write(empty, "", 0) == 0, "write");
    CHECK(us_st_open(empty, &f, &e) == US_EFORMAT && tio_has(e.msg, empty) && tio_has(e.msg, "too short"), "%s",
          e.msg);
    CHECK(us_test_write(empty, "\x02\0\0", 3) == 0, "write");
    CHECK(us_st_open(empty, &f, &e) == US_EFORMAT && tio_has(e.msg, "3 bytes"), "%s", e.msg);
    /* header length beyond the file (truncated header) */
    const char *trunc = tpath("trunc.safetensors");
    CHECK(tio_write_st_raw(trunc, 1000, "{\"w\": {}}", 0) == 0, "write");
    CHECK(us_st_open(trunc, &f, &e) == US_EFORMAT && tio_has(e.msg, trunc) && tio_has(e.msg, "header length 1000") &&
              tio_has(e.msg, "exceeds"),
          "%s", e.msg);
    /* absurd header length */
    CHECK(tio_write_st_raw(trunc, UINT64_MAX, "{}", 0) == 0, "write");
    CHECK(us_st_open(trunc, &f, &e) == US_EFORMAT && tio_has(e.msg, "exceeds"), "%s", e.msg);
    /* header length 0 and 1 */
    CHECK(tio_write_st_raw(trunc, 1, "{}", 0) == 0, "write");
    CHECK(us_st_open(trunc, &f, &e) == US_EFORMAT && tio_has(e.msg, "too short for a JSON object"), "%s", e.msg);
    /* data shorter than the offsets say: a good file cut short */
    float v[8] = {0};
    us_st_write_tensor w = {.name = "w", .dtype = US_DT_F32, .ndim = 1, .shape = {8}, .data = v};
    const char *cut = tpath("cut.safetensors");
    CHECK(us_st_write(cut, &w, 1, NULL, 0, &e) == US_OK, "%s", e.msg);
    struct stat sb;
    CHECK(stat(cut, &sb) == 0 && truncate(cut, sb.st_size - 4) == 0, "truncate");
    CHECK(us_st_open(cut, &f, &e) == US_EFORMAT && tio_has(e.msg, cut) && tio_has(e.msg, "tensor w") &&
              tio_has(e.msg, "truncated"),
          "%s", e.msg);
    /* header over the 100 MiB cap, in a sparse file big enough to hold it */
    const char *big = tpath("big.safetensors");
    CHECK(tio_write_st_raw(big, (uint64_t)150 << 20, "{", 0) == 0 && truncate(big, (off_t)200 << 20) == 0, "sparse");
    CHECK(us_st_open(big, &f, &e) == US_EFORMAT && tio_has(e.msg, big) && tio_has(e.msg, "100 MiB"), "%s", e.msg);
    unlink(big);
}

/* ---------------------------------------------------------------- sharded directories */

static int write_index(const char *dir, const char *json) {
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    return us_test_write(p, json, strlen(json));
}

TEST(safetensors_sharded_bad) {
    const char *dir = us_test_tmpdir();
    us_st_model *m;
    us_err e;
    /* no model files at all */
    CHECK(us_st_model_open(dir, &m, &e) == US_EIO && tio_has(e.msg, dir) && tio_has(e.msg, "no model.safetensors"),
          "%s", e.msg);
    CHECK(us_st_model_open(tpath("nodir"), &m, &e) == US_EIO && tio_has(e.msg, "nodir"), "%s", e.msg);
    float v[2] = {1, 2};
    us_st_write_tensor w = {.name = "a", .dtype = US_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    CHECK(us_st_write(tpath("s1.safetensors"), &w, 1, NULL, 0, &e) == US_OK, "%s", e.msg);
    char idx[1024];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    struct {
        const char *json;
        us_status want;
        const char *n1, *n2;
    } cases[] = {
        {"{\"weight_map\": {\"a\": \"missing.safetensors\"}}", US_EIO, "shard missing.safetensors", "cannot open"},
        {"{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}", US_EFORMAT, "tensor b",
         "no such tensor"},
        {"{\"weight_map\": {\"a\": \"s1.safetensors\"", US_EFORMAT, "malformed JSON", "line 1"},
        {"[]", US_EFORMAT, "must be a JSON object", ""},
        {"{\"metadata\": {}}", US_EFORMAT, "\"weight_map\" must be an object", "nothing"},
        {"{\"weight_map\": {}}", US_EFORMAT, "weight_map\" is empty", ""},
        {"{\"weight_map\": {\"a\": 1}}", US_EFORMAT, "weight_map[\"a\"]", "a number"},
        {"{\"weight_map\": {\"a\": \"../s1.safetensors\"}}", US_EFORMAT, "not a plain file name", "../s1"},
        {"{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}", US_EFORMAT, "tensor a",
         "twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_index(dir, cases[i].json) == 0, "write index");
        m = (us_st_model *)1;
        us_status st = us_st_model_open(dir, &m, &e);
        CHECK(st == cases[i].want && m == NULL, "case %zu: status %d: %s", i, st, e.msg);
        CHECK(tio_has(e.msg, idx) && tio_has(e.msg, cases[i].n1) && tio_has(e.msg, cases[i].n2), "case %zu: %s", i,
              e.msg);
    }
    /* a corrupt shard: the message names the index, the shard and the shard's own problem */
    CHECK(tio_write_st(tpath("s2.safetensors"), "{\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 8]}}",
                       8) == 0,
          "write");
    CHECK(write_index(dir, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}") == 0, "w");
    CHECK(us_st_model_open(dir, &m, &e) == US_EFORMAT && tio_has(e.msg, idx) && tio_has(e.msg, "s2.safetensors") &&
              tio_has(e.msg, "needs 4 bytes"),
          "%s", e.msg);
    /* and a good two-shard index works */
    CHECK(tio_write_st(tpath("s2.safetensors"), "{\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
                       8) == 0,
          "write");
    CHECK(us_st_model_open(dir, &m, &e) == US_OK, "%s", e.msg);
    const char *file;
    CHECK(us_st_model_find(m, "b", &file) && tio_has(file, "s2.safetensors"), "b");
    CHECK(us_st_model_find(m, "a", &file) && tio_has(file, "s1.safetensors"), "a");
    float out[2];
    us_status st = us_st_model_read_f32(m, "b", 1, (int64_t[]){3}, out, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, "s2.safetensors") && tio_has(e.msg, "tensor b"), "%s", e.msg);
    st = us_st_model_read_f32(m, "zz", 1, (int64_t[]){3}, out, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, idx) && tio_has(e.msg, "zz"), "%s", e.msg);
    us_st_model_close(m);
}

/* ---------------------------------------------------------------- writing */

TEST(safetensors_write_atomic) {
    const char *dir = us_test_tmpdir();
    const char *path = tpath("out.bin");
    us_err e;
    CHECK(us_write_file_atomic(path, "hello", 5, &e) == US_OK, "%s", e.msg);
    CHECK(us_write_file_atomic(path, "world!", 6, &e) == US_OK, "%s", e.msg);
    size_t len;
    char *b = tio_slurp(path, &len);
    int same = b && len == 6 && memcmp(b, "world!", 6) == 0;
    free(b);
    CHECK(same, "content");
    CHECK(tio_count_tmp(dir) == 0, "temporary files left");
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644, "mode %o", sb.st_mode & 0777);
    CHECK(us_write_file_atomic(tpath("zero.bin"), NULL, 0, &e) == US_OK, "%s", e.msg);
    CHECK(us_write_file_atomic(NULL, "x", 1, &e) == US_EINVAL, "null path");
    CHECK(us_write_file_atomic("", "x", 1, &e) == US_EINVAL, "empty path");
    CHECK(us_write_file_atomic(path, NULL, 3, &e) == US_EINVAL && tio_has(e.msg, path), "%s", e.msg);

    /* the parent is a regular file: nothing can be created, nothing is */
    const char *bad = tpath("out.bin/child.bin");
    CHECK(us_write_file_atomic(bad, "x", 1, &e) == US_EIO && tio_has(e.msg, bad) && tio_has(e.msg, "temporary"),
          "%s", e.msg);
    b = tio_slurp(path, &len);
    same = b && len == 6 && memcmp(b, "world!", 6) == 0;
    free(b);
    CHECK(same, "parent file was changed");

    /* the target is a directory: the rename fails after the temporary was written; it is removed
     * and the directory is untouched */
    const char *sub = tpath("sub");
    CHECK(mkdir(sub, 0755) == 0, "mkdir");
    CHECK(us_write_file_atomic(sub, "data", 4, &e) == US_EIO && tio_has(e.msg, sub) && tio_has(e.msg, "rename"), "%s",
          e.msg);
    CHECK(tio_count_tmp(dir) == 0, "temporary file left after a failed rename");
    CHECK(stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode), "directory replaced");

    /* a relative path in the current directory works (dir = ".") */
    char rel[128];
    snprintf(rel, sizeof rel, "build/.us_atomic_test_%d", (int)getpid());
    if (tio_exists("build")) {
        CHECK(us_write_file_atomic(rel, "r", 1, &e) == US_OK, "%s", e.msg);
        unlink(rel);
    }
}

TEST(safetensors_write_bad_args) {
    const char *path = tpath("w.safetensors");
    us_err e;
    float v[4] = {1, 2, 3, 4};
    us_st_write_tensor good = {.name = "g", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v};
    CHECK(us_st_write(path, &good, 1, NULL, 0, &e) == US_OK, "%s", e.msg);
    size_t len0;
    char *before = tio_slurp(path, &len0);
    CHECK(before, "read");
    struct {
        us_st_write_tensor t[2];
        size_t n;
        const char *needle;
    } cases[] = {
        {{{.name = "a", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v},
          {.name = "a", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v}},
         2, "duplicate tensor name a"},
        {{{.name = "a", .dtype = US_DT_COUNT, .ndim = 1, .shape = {4}, .data = v}}, 1, "invalid dtype"},
        {{{.name = "a", .dtype = US_DT_F32, .ndim = 9, .shape = {4}, .data = v}}, 1, "invalid ndim"},
        {{{.name = "a", .dtype = US_DT_F32, .ndim = 1, .shape = {-4}, .data = v}}, 1, "negative dimension"},
        {{{.name = "a", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = NULL}}, 1, "no data"},
        {{{.name = "", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v}}, 1, "no name"},
        {{{.name = NULL, .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v}}, 1, "no name"},
        {{{.name = "__metadata__", .dtype = US_DT_F32, .ndim = 1, .shape = {4}, .data = v}}, 1, "__metadata__"},
        {{{.name = "a", .dtype = US_DT_F32, .ndim = 2, .shape = {INT64_MAX, 4}, .data = v}}, 1, "overflow"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        us_status st = us_st_write(path, cases[i].t, cases[i].n, NULL, 0, &e);
        CHECK(st == US_EINVAL && tio_has(e.msg, path) && tio_has(e.msg, cases[i].needle), "case %zu: %d %s", i, st,
              e.msg);
    }
    const char *dup_meta[] = {"k", "1", "k", "2"};
    CHECK(us_st_write(path, &good, 1, dup_meta, 2, &e) == US_EINVAL && tio_has(e.msg, "duplicate metadata key k"),
          "%s", e.msg);
    const char *null_meta[] = {"k", NULL};
    CHECK(us_st_write(path, &good, 1, null_meta, 1, &e) == US_EINVAL && tio_has(e.msg, "metadata"), "%s", e.msg);
    CHECK(us_st_write(path, NULL, 1, NULL, 0, &e) == US_EINVAL, "null tensors");
    CHECK(us_st_write(NULL, &good, 1, NULL, 0, &e) == US_EINVAL, "null path");
    /* the target is unchanged after every failure, and no temporary files remain */
    size_t len1;
    char *after = tio_slurp(path, &len1);
    int same = after && len0 == len1 && memcmp(before, after, len0) == 0;
    free(before);
    free(after);
    CHECK(same, "target changed by a failed write");
    CHECK(tio_count_tmp(us_test_tmpdir()) == 0, "temporary files left");
    /* an unwritable destination through us_st_write */
    const char *bad = tpath("w.safetensors/x.safetensors");
    CHECK(us_st_write(bad, &good, 1, NULL, 0, &e) == US_EIO && tio_has(e.msg, bad), "%s", e.msg);
    /* zero tensors: a valid, empty file */
    CHECK(us_st_write(tpath("none.safetensors"), NULL, 0, NULL, 0, &e) == US_OK, "%s", e.msg);
    us_st_file *f;
    CHECK(us_st_open(tpath("none.safetensors"), &f, &e) == US_OK && us_st_count(f) == 0, "%s", e.msg);
    us_st_close(f);
}
