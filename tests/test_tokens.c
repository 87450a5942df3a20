/* test_tokens.c — the pre-tokenized JSONL reader and the dataset container: the committed
 * fixture data, blank/CRLF/unterminated lines, a very long line, and one case per rejected line
 * asserting the status, the FILE:LINE prefix and the problem in the message, and that a failed
 * load leaves the dataset empty. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "test.h"
#include "test_io_util.h"

static const char *write_tmp(const char *name, const char *text) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", us_test_tmpdir(), name);
    return us_test_write(path, text, strlen(text)) == 0 ? path : NULL;
}

TEST(tokens_fixture) {
    us_token_dataset ds;
    us_err e;
    CHECK(us_jsonl_tokens_load(FIXTURES "/llama_silu_gqa_tied/data.jsonl", 256, &ds, &e) == US_OK, "%s", e.msg);
    int ok = ds.n >= 2 && ds.ex[0].n == 16 && ds.ex[0].ids[0] == 168 && ds.ex[0].ids[15] == 47 &&
             ds.ex[0].labels[0] == US_IGNORE_INDEX && ds.ex[0].labels[3] == 72 && ds.ex[1].ids[0] == 31;
    us_token_dataset_free(&ds);
    CHECK(ok, "fixture contents");
    /* the fixtures' vocabulary is 256: a smaller one must reject them, naming file:line */
    us_status st = us_jsonl_tokens_load(FIXTURES "/llama_silu_gqa_tied/data.jsonl", 100, &ds, &e);
    CHECK(st == US_EFORMAT && tio_has(e.msg, "data.jsonl:1:") && tio_has(e.msg, "outside the vocabulary [0, 100)"),
          "%s", e.msg);
    CHECK(ds.n == 0 && ds.ex == NULL, "dataset not emptied on failure");
}

TEST(tokens_lines) {
    const char *text = "\n"
                       "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\r\n"
                       "   \t\n"
                       "{\"input_ids\": [4, 5]}\n"
                       "{\"labels\": null, \"input_ids\": [9], \"extra\": \"ignored\"}\n"
                       "\n"
                       "  {\"input_ids\": [0, 7.0]}  ";
    const char *path = write_tmp("a.jsonl", text);
    CHECK(path, "write");
    us_token_dataset ds;
    us_err e;
    CHECK(us_jsonl_tokens_load(path, 10, &ds, &e) == US_OK, "%s", e.msg);
    int ok = ds.n == 4 && ds.ex[0].n == 3 && ds.ex[0].labels[0] == -100 && ds.ex[0].labels[2] == 3 &&
             ds.ex[1].n == 2 && ds.ex[1].labels[0] == 4 && ds.ex[1].labels[1] == 5 && ds.ex[1].labels != ds.ex[1].ids &&
             ds.ex[2].n == 1 && ds.ex[2].labels[0] == 9 && ds.ex[3].n == 2 && ds.ex[3].ids[1] == 7;
    us_token_dataset_free(&ds);
    us_token_dataset_free(&ds); /* idempotent */
    CHECK(ok, "parsed contents");
    us_token_dataset_free(NULL);
}

TEST(tokens_long_line) {
    enum { N = 100000 };
    char *text = malloc((size_t)N * 8 + 64);
    CHECK(text, "alloc");
    size_t k = (size_t)sprintf(text, "{\"input_ids\": [");
    for (int i = 0; i < N; i++) k += (size_t)sprintf(text + k, "%s%d", i ? "," : "", i % 50000);
    sprintf(text + k, "]}\n{\"input_ids\": [1]}\n");
    const char *path = write_tmp("long.jsonl", text);
    free(text);
    CHECK(path, "write");
    us_token_dataset ds;
    us_err e;
    CHECK(us_jsonl_tokens_load(path, 50000, &ds, &e) == US_OK, "%s", e.msg);
    int ok = ds.n == 2 && ds.ex[0].n == N && ds.ex[0].ids[N - 1] == (N - 1) % 50000 && ds.ex[1].ids[0] == 1;
    us_token_dataset_free(&ds);
    CHECK(ok, "long line contents");
    /* many lines grow the example table */
    FILE *f = fopen(path, "w");
    CHECK(f, "open");
    for (int i = 0; i < 1000; i++) fprintf(f, "{\"input_ids\": [%d, %d]}\n", i % 7, i % 5);
    fclose(f);
    CHECK(us_jsonl_tokens_load(path, 10, &ds, &e) == US_OK, "%s", e.msg);
    ok = ds.n == 1000 && ds.ex[999].ids[0] == 999 % 7 && ds.ex[999].ids[1] == 999 % 5;
    us_token_dataset_free(&ds);
    CHECK(ok, "1000 lines");
}

TEST(tokens_push) {
    us_token_dataset ds = {0};
    us_err e;
    int32_t ids[3] = {1, 2, 3}, labels[3] = {-100, 2, 3};
    CHECK(us_token_dataset_push(&ds, ids, NULL, 3, &e) == US_OK, "%s", e.msg);
    CHECK(us_token_dataset_push(&ds, ids, labels, 3, &e) == US_OK, "%s", e.msg);
    ids[0] = 9; /* copies, not aliases */
    int ok = ds.n == 2 && ds.ex[0].ids[0] == 1 && ds.ex[0].labels[0] == 1 && ds.ex[1].labels[0] == -100;
    CHECK(us_token_dataset_push(&ds, ids, NULL, 0, &e) == US_EINVAL, "empty example");
    CHECK(us_token_dataset_push(&ds, NULL, NULL, 2, &e) == US_EINVAL, "null ids");
    CHECK(us_token_dataset_push(NULL, ids, NULL, 2, &e) == US_EINVAL, "null ds");
    us_token_dataset_free(&ds);
    CHECK(ok, "contents");
}

typedef struct {
    const char *text;
    us_status want;
    const char *where; /* ":LINE:" or "" */
    const char *needle;
} tok_case;

static const tok_case tok_cases[] = {
    {"{\"input_ids\": [1]}\n{\"input_ids\": [1]}\n{\"input_ids\": [1,}\n", US_EFORMAT, ":3:", "malformed JSON"},
    {"{\"input_ids\": [1]}\n\n\nnot json\n", US_EFORMAT, ":4:", "malformed JSON"},
    {"[1, 2, 3]\n", US_EFORMAT, ":1:", "must be a JSON object"},
    {"{\"ids\": [1]}\n", US_EFORMAT, ":1:", "missing \"input_ids\""},
    {"{\"input_ids\": \"1 2\"}\n", US_EFORMAT, ":1:", "\"input_ids\" must be an array"},
    {"{\"input_ids\": []}\n", US_EFORMAT, ":1:", "\"input_ids\" is empty"},
    {"{\"input_ids\": [1, 256]}\n", US_EFORMAT, ":1:", "\"input_ids\"[1] = 256 is outside the vocabulary [0, 256)"},
    {"{\"input_ids\": [-1]}\n", US_EFORMAT, ":1:", "\"input_ids\"[0] = -1 is outside"},
    {"{\"input_ids\": [-100]}\n", US_EFORMAT, ":1:", "\"input_ids\"[0] = -100 is outside"},
    {"{\"input_ids\": [1.5]}\n", US_EFORMAT, ":1:", "\"input_ids\"[0] = 1.5 is not a valid integer"},
    {"{\"input_ids\": [1e20]}\n", US_EFORMAT, ":1:", "not a valid integer"},
    {"{\"input_ids\": [\"5\"]}\n", US_EFORMAT, ":1:", "\"input_ids\"[0] must be an integer, got a string"},
    {"{\"input_ids\": [null]}\n", US_EFORMAT, ":1:", "got null"},
    {"{\"input_ids\": [[1]]}\n", US_EFORMAT, ":1:", "got an array"},
    {"{\"input_ids\": [1, 2], \"labels\": [1]}\n", US_EFORMAT, ":1:", "\"labels\" has 1 entries but \"input_ids\" has 2"},
    {"{\"input_ids\": [1], \"labels\": 5}\n", US_EFORMAT, ":1:", "\"labels\" must be an array"},
    {"{\"input_ids\": [1], \"labels\": [-5]}\n", US_EFORMAT, ":1:", "\"labels\"[0] = -5 is outside the vocabulary"},
    {"{\"input_ids\": [1], \"labels\": [256]}\n", US_EFORMAT, ":1:", "not -100"},
    {"{\"input_ids\": [1], \"labels\": [true]}\n", US_EFORMAT, ":1:", "got a boolean"},
    {"{\"input_ids\": [1]} trailing\n", US_EFORMAT, ":1:", "unexpected data"},
    {"{\"input_ids\": [1]}{\"input_ids\": [2]}\n", US_EFORMAT, ":1:", "unexpected data"},
    {"", US_EFORMAT, "", "no examples"},
    {"\n  \n\t\n", US_EFORMAT, "", "no examples"},
};

TEST(tokens_rejects) {
    for (size_t i = 0; i < sizeof tok_cases / sizeof tok_cases[0]; i++) {
        const tok_case *k = &tok_cases[i];
        const char *path = write_tmp("bad.jsonl", k->text);
        CHECK(path, "write");
        us_token_dataset ds;
        us_err e = {{0}};
        us_status st = us_jsonl_tokens_load(path, 256, &ds, &e);
        CHECK(st == k->want, "case %zu: status %d: %s", i, st, e.msg);
        char where[1100];
        snprintf(where, sizeof where, "%s%s", path, k->where);
        CHECK(tio_has(e.msg, where) && tio_has(e.msg, k->needle), "case %zu: %s", i, e.msg);
        CHECK(ds.n == 0 && ds.ex == NULL, "case %zu: dataset not empty after failure", i);
    }
}

TEST(tokens_bad_files) {
    us_token_dataset ds;
    us_err e;
    char path[1100];
    snprintf(path, sizeof path, "%s/absent.jsonl", us_test_tmpdir());
    CHECK(us_jsonl_tokens_load(path, 10, &ds, &e) == US_EIO && tio_has(e.msg, path) && tio_has(e.msg, "cannot open"),
          "%s", e.msg);
    const char *dir = us_test_tmpdir();
    us_status st = us_jsonl_tokens_load(dir, 10, &ds, &e);
    CHECK(st == US_EIO && tio_has(e.msg, dir), "directory: %d %s", st, e.msg);
    const char *ok = write_tmp("ok.jsonl", "{\"input_ids\": [1]}\n");
    CHECK(us_jsonl_tokens_load(ok, 0, &ds, &e) == US_EINVAL && tio_has(e.msg, "vocabulary size 0"), "%s", e.msg);
    CHECK(us_jsonl_tokens_load(NULL, 10, &ds, &e) == US_EINVAL, "null path");
}
