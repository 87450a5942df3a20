/* cmd_generate.c — `unswag generate`: text (or ids) from a model, with or without an adapter.
 *
 * The prompt is prefilled in one pass, then tokens come one at a time through the KV cache
 * (src/model/decode.c). Each token is printed as soon as it exists: with a tokenizer
 * (MODEL/tokenizer.json) the generated ids are decoded as a whole and the new suffix printed
 * (so multi-byte characters split over tokens come out whole; an incomplete UTF-8 tail is held
 * back), without one the ids themselves. Generation stops at --max-new-tokens, at the EOS id
 * (config.json, else the tokenizer's), or when the context is full. tokens/s go to stderr at
 * the end. --chat is a read-eval loop over stdin that renders the conversation through the
 * tokenizer's chat template (tok/chat.h) on every turn; text features without a tokenizer, or
 * without chat-template support, fail with a message saying what is missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cJSON.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "model/decode.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

static const char *usage =
    "usage: unswag generate --model DIR [--adapter DIR] (--prompt TEXT | --prompt-ids LIST | --chat) [options]\n"
    "\n"
    "Generates from a Hugging Face model, with or without a PEFT LoRA adapter, using a KV cache.\n"
    "Tokens are printed as they come; tokens/s are reported at the end (stderr).\n"
    "\n"
    "  --model DIR            Hugging Face model directory (tokenizer.json there for text)\n"
    "  --adapter DIR          PEFT LoRA adapter applied while generating\n"
    "  --prompt TEXT          the prompt as text (needs MODEL/tokenizer.json)\n"
    "  --prompt-ids LIST      the prompt as token ids, e.g. 1,2,3 (no tokenizer needed)\n"
    "  --chat                 interactive: one user message per stdin line, the chat template applied\n"
    "  --system TEXT          system message for --chat\n"
    "  --max-new-tokens N     (128)\n"
    "  --temperature X        0 = greedy (default); > 0 samples\n"
    "  --top-k N (0: off)  --top-p X (1: off)  --seed N (0)\n"
    "  --ids                  print token ids even when a tokenizer exists\n"
    "  --no-special           do not add the tokenizer's special tokens (BOS) to --prompt\n"
    "  --device cpu|cuda  --threads N\n"
    "\n"
    "examples:\n"
    "  unswag generate --model ./SmolLM2-135M --adapter ./adapter --prompt \"The capital of France is\"\n"
    "  unswag generate --model ./SmolLM2-135M --prompt \"Once\" --temperature 0.8 --top-p 0.95 --seed 1\n"
    "  unswag generate --model build/demo/pretrained --adapter build/demo/adapter --prompt-ids 14,3,1,4,1,5,9,10\n"
    "  unswag generate --model ./SmolLM2-135M-Instruct --chat\n";

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static us_status parse_ids(const char *s, int32_t **ids, int *n, us_err *e) {
    int cap = 16;
    *n = 0;
    *ids = malloc((size_t)cap * 4);
    if (!*ids) return us_fail(e, US_ENOMEM, "out of memory");
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) return us_fail(e, US_EINVAL, "--prompt-ids %s: expected ids like 1,2,3", s);
        if (*n == cap) {
            int32_t *np = realloc(*ids, (size_t)(cap *= 2) * 4);
            if (!np) return us_fail(e, US_ENOMEM, "out of memory");
            *ids = np;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    if (!*n) return us_fail(e, US_EINVAL, "--prompt-ids: no ids");
    return US_OK;
}

typedef struct gen_ctx {
    us_model *m;
    us_decoder *d;
    us_tokenizer *tok; /* NULL: print ids */
    us_sampler smp;
    int max_new, eos;
    float *logits;
    char *printed;     /* text printed so far for this generation */
    size_t printed_n;
} gen_ctx;

/* prints what decoding ids[0..n) adds beyond what was already printed */
static void stream_text(gen_ctx *g, const int32_t *ids, int n, bool final) {
    char *text;
    size_t len;
    us_err e;
    if (us_tokenizer_decode(g->tok, ids, (size_t)n, true, &text, &len, &e)) return;
    /* hold back a trailing U+FFFD: the next token may complete the character */
    size_t shown = len;
    if (!final && len >= 3 && !memcmp(text + len - 3, "\xEF\xBF\xBD", 3)) shown = len - 3;
    if (shown > g->printed_n && !strncmp(text, g->printed ? g->printed : "", g->printed_n)) {
        fwrite(text + g->printed_n, 1, shown - g->printed_n, stdout);
        fflush(stdout);
        free(g->printed);
        g->printed = text;
        g->printed_n = shown;
        return;
    }
    free(text);
}

/* generates after the prompt; returns the number of new tokens (reply ids in *out when not NULL) */
static us_status generate(gen_ctx *g, const int32_t *prompt, int n_prompt, bool ids_out, int *n_new, double *t_prefill,
                          double *t_gen, us_err *e) {
    us_decoder_reset(g->d);
    free(g->printed);
    g->printed = NULL;
    g->printed_n = 0;
    *n_new = 0;
    int V = g->m->cfg.vocab, room = us_decoder_len(g->d);
    double t0 = now_s();
    us_status st = us_decoder_feed(g->d, prompt, n_prompt, g->logits, e);
    if (st) return st;
    *t_prefill = now_s() - t0;
    t0 = now_s();
    int32_t *out = malloc((size_t)(g->max_new + 1) * 4);
    if (!out) return us_fail(e, US_ENOMEM, "out of memory");
    (void)room;
    for (int i = 0; i < g->max_new; i++) {
        int32_t id = us_sample(&g->smp, g->logits, V);
        out[(*n_new)++] = id;
        if (id == g->eos) break;
        if (g->tok && !ids_out) {
            stream_text(g, out, *n_new, false);
        } else {
            printf(i ? " %d" : "%d", id);
            fflush(stdout);
        }
        if (i + 1 == g->max_new || us_decoder_len(g->d) + 1 > g->m->cfg.max_pos) break;
        if ((st = us_decoder_feed(g->d, &id, 1, g->logits, e))) break;
    }
    if (!st && g->tok && !ids_out) stream_text(g, out, *n_new - (out[*n_new - 1] == g->eos), true);
    *t_gen = now_s() - t0;
    free(out);
    return st;
}

static void report_speed(int n_prompt, double t_prefill, int n_new, double t_gen) {
    fprintf(stderr, "\n[prompt %d tokens in %.3f s (%.1f tokens/s); generated %d tokens in %.3f s (%.1f tokens/s)]\n",
            n_prompt, t_prefill, t_prefill > 0 ? n_prompt / t_prefill : 0, n_new, t_gen, t_gen > 0 ? n_new / t_gen : 0);
}

static us_status chat_loop(gen_ctx *g, const char *system, bool add_special, us_err *e) {
    us_chat_template *ct = NULL;
    us_status st = us_chat_template_for(g->tok, NULL, &ct, e);
    if (st) return st;
    cJSON *msgs = cJSON_CreateArray();
    if (system) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "role", "system");
        cJSON_AddStringToObject(s, "content", system);
        cJSON_AddItemToArray(msgs, s);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    fprintf(stderr, "chat: one message per line; an empty line or end of input quits\n> ");
    while ((r = getline(&line, &cap, stdin)) > 0) {
        while (r && (line[r - 1] == '\n' || line[r - 1] == '\r')) line[--r] = 0;
        if (!r) break;
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", line);
        cJSON_AddItemToArray(msgs, u);
        char *text;
        size_t len;
        if ((st = us_chat_render(ct, msgs, true, &text, &len, e))) break;
        int32_t *ids;
        size_t n;
        st = us_tokenizer_encode(g->tok, text, len, add_special, &ids, &n, e);
        free(text);
        if (st) break;
        int n_new;
        double tp, tg;
        st = generate(g, ids, (int)n, false, &n_new, &tp, &tg, e);
        free(ids);
        if (st) break;
        report_speed((int)n, tp, n_new, tg);
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", g->printed ? g->printed : "");
        cJSON_AddItemToArray(msgs, a);
        fprintf(stderr, "> ");
    }
    free(line);
    cJSON_Delete(msgs);
    us_chat_template_free(ct);
    return st;
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *prompt = NULL, *prompt_ids = NULL, *device = "cpu", *system = NULL;
    bool chat = false, ids_out = false, add_special = true;
    int max_new = 128, threads = 0;
    double temperature = 0, top_p = 1;
    int top_k = 0;
    uint64_t seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
#define VAL() (v = us_arg_value(argc, argv, &i))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--model")) { if (!VAL()) return 2; model = v; }
        else if (!strcmp(a, "--adapter")) { if (!VAL()) return 2; adapter = v; }
        else if (!strcmp(a, "--prompt")) { if (!VAL()) return 2; prompt = v; }
        else if (!strcmp(a, "--prompt-ids")) { if (!VAL()) return 2; prompt_ids = v; }
        else if (!strcmp(a, "--system")) { if (!VAL()) return 2; system = v; }
        else if (!strcmp(a, "--device")) { if (!VAL()) return 2; device = v; }
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--ids")) ids_out = true;
        else if (!strcmp(a, "--no-special")) add_special = false;
        else if (!strcmp(a, "--max-new-tokens")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 24, &max_new)) return 2; }
        else if (!strcmp(a, "--top-k")) { if (!VAL() || !us_arg_int(a, v, 0, 1 << 30, &top_k)) return 2; }
        else if (!strcmp(a, "--threads")) { if (!VAL() || !us_arg_int(a, v, 1, 4096, &threads)) return 2; }
        else if (!strcmp(a, "--temperature")) { if (!VAL() || !us_arg_double(a, v, &temperature)) return 2; }
        else if (!strcmp(a, "--top-p")) { if (!VAL() || !us_arg_double(a, v, &top_p)) return 2; }
        else if (!strcmp(a, "--seed")) { if (!VAL() || !us_arg_u64(a, v, &seed)) return 2; }
        else {
            fprintf(stderr, "unswag generate: unknown option %s (see unswag generate --help)\n", a);
            return 2;
        }
#undef VAL
    }
    if (!model || (!!prompt + !!prompt_ids + chat) != 1) {
        fprintf(stderr, "unswag generate: --model DIR and exactly one of --prompt, --prompt-ids, --chat are required\n");
        return 2;
    }
    if (temperature < 0 || !(top_p > 0 && top_p <= 1)) {
        fprintf(stderr, "unswag generate: --temperature must be >= 0 and --top-p in (0, 1]\n");
        return 2;
    }
    us_err e = {{0}};
    us_backend *be = NULL;
    gen_ctx g = {.max_new = max_new, .eos = -1,
                 .smp = {.temperature = (float)temperature, .top_k = top_k, .top_p = (float)top_p, .seed = seed}};
    int32_t *ids = NULL;
    size_t n = 0;
    us_status st = US_OK;
    /* a tokenizer when the model has one; text features need it */
    char tj[4096];
    struct stat sb;
    bool have_tok = us_path_join(tj, sizeof tj, model, "tokenizer.json") && stat(tj, &sb) == 0;
    if ((prompt || chat) && !have_tok)
        st = us_fail(&e, US_EINVAL, "%s needs a tokenizer, but %s does not exist; give token ids with --prompt-ids 1,2,3",
                     chat ? "--chat" : "--prompt", tj);
    if (!st && have_tok) st = us_tokenizer_load(model, &g.tok, &e);
    if (!st) st = us_backend_create(device, threads, &be, &e);
    if (!st) st = us_model_load_inference(&g.m, be, model, adapter, &e);
    if (!st) {
        g.eos = g.m->cfg.eos_id >= 0 ? g.m->cfg.eos_id : g.tok ? us_tokenizer_eos_id(g.tok) : -1;
        st = us_decoder_create(g.m, g.m->cfg.max_pos, &g.d, &e);
    }
    if (!st && !(g.logits = malloc((size_t)g.m->cfg.vocab * 4))) st = us_fail(&e, US_ENOMEM, "out of memory");
    if (!st && chat) {
        st = chat_loop(&g, system, add_special, &e);
    } else if (!st) {
        int ni = 0;
        if (prompt_ids) {
            st = parse_ids(prompt_ids, &ids, &ni, &e);
            n = (size_t)ni;
        } else {
            st = us_tokenizer_encode(g.tok, prompt, strlen(prompt), add_special, &ids, &n, &e);
            if (!st && n == 0) st = us_fail(&e, US_EINVAL, "--prompt: encodes to no tokens");
        }
        if (!st && (int)n >= g.m->cfg.max_pos)
            st = us_fail(&e, US_EINVAL, "the prompt (%zu tokens) leaves no room in the context of %d", n, g.m->cfg.max_pos);
        int n_new = 0;
        double tp = 0, tg = 0;
        if (!st && g.tok && !ids_out && prompt) fputs(prompt, stdout);
        if (!st) st = generate(&g, ids, (int)n, ids_out || !g.tok, &n_new, &tp, &tg, &e);
        if (!st) {
            fputc('\n', stdout);
            fflush(stdout);
            report_speed((int)n, tp, n_new, tg);
        }
    }
    free(ids);
    free(g.logits);
    free(g.printed);
    us_decoder_free(g.d);
    us_model_free(g.m);
    if (be) be->destroy(be);
    us_tokenizer_free(g.tok);
    if (st) {
        fprintf(stderr, "unswag generate: error: %s\n", e.msg);
        return 1;
    }
    return 0;
}
