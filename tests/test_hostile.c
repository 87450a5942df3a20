/* test_hostile.c — the hostile-input corpus (tests/hostile/, written by make_hostile.py and
 * grown by fuzzing) fed to the reader of its format.
 *
 * safetensors/ -> us_st_open (and, when it opens, every tensor converted or copied, so an offset
 * that lies past the mapping would fault here); config/ -> us_config_load; jsonl/ ->
 * us_jsonl_tokens_load with a 256-token vocabulary; adapter/ -> us_adapter_open (and every A/B
 * read when it opens); tokenizer/ -> us_tokenizer_load (and an encode/decode round when it loads);
 * model_nan/ -> `unswag train`, which must stop with the non-finite message (exit 1).
 * bad_* must be refused with a message that names the file; ok_* must load; any_* may go either
 * way. Under `make asan` every one of them also runs with AddressSanitizer + UBSan, so a crash,
 * an out-of-bounds read or a leak fails the suite. At least 100 inputs must be present. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "test.h"
#include "test_cli_util.h"
#include "tok/tokenizer.h"

#define HOSTILE "tests/hostile"

typedef us_status (*reader_fn)(const char *path, us_err *e);

static us_status read_safetensors(const char *path, us_err *e) {
    us_st_file *f;
    us_status st = us_st_open(path, &f, e);
    if (st) return st;
    for (size_t i = 0; i < us_st_count(f); i++) {
        const us_st_tensor *t = us_st_at(f, i);
        float *buf = malloc(t->numel ? (size_t)t->numel * 4 : 4);
        if (!us_convert_to_f32(buf, t->data, t->dtype, (size_t)t->numel)) {
            volatile unsigned char sum = 0; /* non-floating dtypes: touch every byte */
            for (size_t b = 0; b < t->nbytes; b++) sum ^= ((const unsigned char *)t->data)[b];
        }
        free(buf);
    }
    us_st_close(f);
    return US_OK;
}

static us_status read_config(const char *path, us_err *e) {
    us_config c;
    return us_config_load(path, &c, e);
}

static us_status read_jsonl(const char *path, us_err *e) {
    us_token_dataset ds;
    us_status st = us_jsonl_tokens_load(path, 256, &ds, e);
    us_token_dataset_free(&ds);
    return st;
}

static us_status read_adapter(const char *path, us_err *e) {
    us_adapter *a;
    us_status st = us_adapter_open(path, &a, e);
    if (st) return st;
    const us_lora_config *c = us_adapter_config(a);
    float *buf = malloc((size_t)c->r * 64 * 4);
    for (int t = 0; t < US_T_COUNT && !st; t++) /* the hostile adapters are for an 8-wide layer 0 */
        if (c->targets & (1u << t)) {
            st = us_adapter_read(a, 0, t, 0, c->r, 8, buf, e);
            if (!st) st = us_adapter_read(a, 0, t, 1, t == US_T_K || t == US_T_V ? 4 : 8, c->r, buf, e);
        }
    free(buf);
    us_adapter_close(a);
    return st;
}

static us_status read_tokenizer(const char *path, us_err *e) {
    us_tokenizer *tok;
    us_status st = us_tokenizer_load(path, &tok, e);
    if (st) return st;
    static const char *const texts[] = {"ab ba aab \xc3\xa9 aaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
                                        "Hello, world! ab ba \xc3\xa9\xe2\x82\xac 123 <s>" /* as fuzz_tokenizer */};
    for (int k = 0; k < 2; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (us_tokenizer_encode(tok, texts[k], strlen(texts[k]), true, &ids, &n, e) == US_OK) {
            char *back = NULL;
            size_t len;
            us_tokenizer_decode(tok, ids, n, false, &back, &len, e);
            free(back);
        }
        free(ids);
    }
    us_tokenizer_free(tok);
    return US_OK; /* loaded: encode errors are fine, crashes are not */
}

/* Feeds every entry of HOSTILE/sub to fn; returns the count, or -1 with msg set on a violation. */
static int run_dir(const char *sub, reader_fn fn, int *n_bad, char *msg, size_t cap) {
    char dir[512];
    snprintf(dir, sizeof dir, HOSTILE "/%s", sub);
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(msg, cap, "cannot open %s", dir);
        return -1;
    }
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        bool bad = !strncmp(nm, "bad_", 4), ok = !strncmp(nm, "ok_", 3), any = !strncmp(nm, "any_", 4);
        if (!bad && !ok && !any) continue;
        char path[768];
        snprintf(path, sizeof path, "%.255s/%.500s", dir, nm);
        us_err e = {{0}};
        us_status st = fn(path, &e);
        n++;
        if (bad && st == US_OK) {
            snprintf(msg, cap, "%s was accepted", path);
            closedir(d);
            return -1;
        }
        if (bad && (!e.msg[0] || !strstr(e.msg, nm))) {
            snprintf(msg, cap, "%s: the message does not name the file: \"%.1000s\"", path, e.msg);
            closedir(d);
            return -1;
        }
        if (ok && st != US_OK) {
            snprintf(msg, cap, "%s was refused: %.1000s", path, e.msg);
            closedir(d);
            return -1;
        }
        *n_bad += bad;
    }
    closedir(d);
    return n;
}

TEST(hostile_corpus_readers) {
    static const struct {
        const char *sub;
        reader_fn fn;
    } kinds[] = {{"safetensors", read_safetensors}, {"config", read_config}, {"jsonl", read_jsonl},
                 {"adapter", read_adapter},         {"tokenizer", read_tokenizer}};
    char msg[2048];
    int total = 0, bad = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        int n = run_dir(kinds[k].sub, kinds[k].fn, &bad, msg, sizeof msg);
        CHECK(n >= 0, "%s", cu_tail(msg));
        CHECK(n >= 10, "only %d inputs in " HOSTILE "/%s", n, kinds[k].sub);
        total += n;
    }
    CHECK(total >= 100, "only %d hostile inputs", total);
    printf("     hostile_corpus_readers: %d inputs (%d must-refuse) handled\n", total, bad);
}

TEST(hostile_nan_models_stop) {
    DIR *d = opendir(HOSTILE "/model_nan");
    CHECK(d, "no " HOSTILE "/model_nan");
    const char *tmp = us_test_tmpdir();
    int n = 0;
    struct dirent *de;
    static char o[16384];
    char failure[2048] = "";
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "nan_", 4) != 0) continue;
        int rc = cu_run(o, sizeof o,
                        CU_ENV "%s train --model " HOSTILE "/model_nan/%s --data " HOSTILE "/model_nan/data.jsonl "
                               "--out %s/%s --steps 8 --batch 2 --lora-r 2 --max-skips 3 --save-every 2 --quiet",
                        cu_cli(), de->d_name, tmp, de->d_name);
        n++;
        if (rc != 1 || cu_sanitizer_report(o) || !strstr(o, "3 updates in a row had a non-finite loss or gradient") ||
            !strstr(o, "No checkpoint was written") == !strstr(o, "last good checkpoint")) {
            snprintf(failure, sizeof failure, "%s: exit %d: %s", de->d_name, rc, cu_tail(o));
            break;
        }
    }
    closedir(d);
    CHECK(!failure[0], "%s", cu_tail(failure));
    CHECK(n >= 5, "only %d NaN models", n);
}
