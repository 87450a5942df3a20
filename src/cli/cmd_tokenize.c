/* cmd_tokenize.c — `unswag tokenize` and `unswag detokenize`.
 *
 * Both are line filters so that tests and scripts can drive the tokenizer in bulk with one
 * process: tokenize reads one JSON string per line and writes one JSON array of ids per line;
 * detokenize does the reverse. A line that is not what it should be stops the run with
 * "<stdin>:LINE: ..." and exit status 1; nothing is written for it. `tokenize --chat` renders a
 * {"messages": [...]} line through the chat template instead (text, or ids with --ids), and
 * `tokenize --bench FILE` measures single-thread encode throughput. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/commands.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

static void usage_tokenize(FILE *f) {
    fputs("usage: unswag tokenize --tokenizer PATH [--add-special] [--jsonl]\n"
          "       unswag tokenize --tokenizer PATH --chat [--chat-template NAME|FILE] [--add-generation-prompt] [--ids]\n"
          "       unswag tokenize --tokenizer PATH --bench FILE [--add-special]\n"
          "  Reads one JSON string per line on stdin and writes one JSON array of token ids per line.\n"
          "  PATH is a tokenizer.json or the directory holding it (tokenizer_config.json is read beside it).\n"
          "  --add-special            apply the post-processor template (e.g. BOS)\n"
          "  --jsonl                  line mode (the default; without it too, each line is one JSON string)\n"
          "  --chat                   each line is {\"messages\": [{\"role\", \"content\"}...]}: write the rendered\n"
          "                           chat template as a JSON string (or its ids with --ids)\n"
          "  --chat-template NAME     force a template: llama3, chatml, gemma, llama2, mistral, or a file\n"
          "  --add-generation-prompt  end with the assistant header\n"
          "  --bench FILE             encode FILE (UTF-8 text) on one thread and print MB/s\n",
          f);
}

static void usage_detokenize(FILE *f) {
    fputs("usage: unswag detokenize --tokenizer PATH [--skip-special] [--jsonl]\n"
          "  Reads one JSON array of token ids per line on stdin and writes one JSON string per line.\n"
          "  --skip-special   drop special tokens\n",
          f);
}

static void json_write_string(FILE *f, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') fputs("\\\"", f);
        else if (c == '\\') fputs("\\\\", f);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\b') fputs("\\b", f);
        else if (c == '\f') fputs("\\f", f);
        else if (c < 0x20) { /* the same spelling as JSON.stringify, so outputs compare as text */
            fputs("\\u00", f);
            fputc(hex[c >> 4], f);
            fputc(hex[c & 15], f);
        } else fputc((int)c, f);
    }
    fputc('"', f);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench(us_tokenizer *tok, const char *file, bool add_special) {
    char *text = NULL;
    size_t len = 0;
    us_err e = {{0}};
    if (us_read_file(file, &text, &len, &e)) {
        fprintf(stderr, "unswag tokenize: %s\n", e.msg);
        return 1;
    }
    /* encode line by line (as a dataset reader would), timing the whole pass; best of 3 */
    double best = 1e30;
    size_t ntok = 0;
    for (int rep = 0; rep < 3; rep++) {
        ntok = 0;
        double t0 = now_s();
        size_t i = 0;
        while (i < len) {
            size_t j = i;
            while (j < len && text[j] != '\n') j++;
            if (j < len) j++;
            int32_t *ids;
            size_t n;
            if (us_tokenizer_encode(tok, text + i, j - i, add_special, &ids, &n, &e)) {
                fprintf(stderr, "unswag tokenize: %s: %s\n", file, e.msg);
                free(text);
                return 1;
            }
            ntok += n;
            free(ids);
            i = j;
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    printf("{\"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"MB_per_s\": %.2f}\n", len, ntok, best,
           (double)len / 1e6 / best);
    free(text);
    return 0;
}

static int load_tok(const char *cmd, const char *path, us_tokenizer **tok) {
    if (!path) {
        fprintf(stderr, "unswag %s: --tokenizer PATH is required (see --help)\n", cmd);
        return 2;
    }
    us_err e = {{0}};
    if (us_tokenizer_load(path, tok, &e)) {
        fprintf(stderr, "unswag %s: %s\n", cmd, e.msg);
        return 1;
    }
    return 0;
}

static int chat_lines(us_tokenizer *tok, const char *force, bool gen_prompt, bool ids_out, bool add_special) {
    us_err e = {{0}};
    us_chat_template *ct = NULL;
    if (us_chat_template_for(tok, force, &ct, &e)) {
        fprintf(stderr, "unswag tokenize: %s\n", e.msg);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    long lineno = 0;
    int rc = 0;
    while ((r = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)r);
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!j || !cJSON_IsArray(msgs)) {
            fprintf(stderr, "unswag tokenize: <stdin>:%ld: expected {\"messages\": [...]}\n", lineno);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        char *out = NULL;
        size_t outn = 0;
        if (us_chat_render(ct, msgs, gen_prompt, &out, &outn, &e)) {
            fprintf(stderr, "unswag tokenize: <stdin>:%ld: %s\n", lineno, e.msg);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        cJSON_Delete(j);
        if (ids_out) {
            int32_t *ids;
            size_t n;
            if (us_tokenizer_encode(tok, out, outn, add_special, &ids, &n, &e)) {
                fprintf(stderr, "unswag tokenize: <stdin>:%ld: %s\n", lineno, e.msg);
                free(out);
                rc = 1;
                break;
            }
            fputc('[', stdout);
            for (size_t k = 0; k < n; k++) printf(k ? ",%d" : "%d", (int)ids[k]);
            fputs("]\n", stdout);
            free(ids);
        } else {
            json_write_string(stdout, out, outn);
            fputc('\n', stdout);
        }
        free(out);
    }
    free(line);
    us_chat_template_free(ct);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL, *bench_file = NULL, *force = NULL;
    bool add_special = false, chat = false, gen_prompt = false, ids_out = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_tokenize(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(a, "--bench") && i + 1 < argc) bench_file = argv[++i];
        else if (!strcmp(a, "--chat-template") && i + 1 < argc) force = argv[++i], chat = true;
        else if (!strcmp(a, "--add-special")) add_special = true;
        else if (!strcmp(a, "--jsonl")) continue;
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--add-generation-prompt")) gen_prompt = true;
        else if (!strcmp(a, "--ids")) ids_out = true;
        else {
            fprintf(stderr, "unswag tokenize: unknown or incomplete option '%s'\n", a);
            usage_tokenize(stderr);
            return 2;
        }
    }
    us_tokenizer *tok = NULL;
    int rc = load_tok("tokenize", path, &tok);
    if (rc) return rc;
    if (bench_file) {
        rc = bench(tok, bench_file, add_special);
        us_tokenizer_free(tok);
        return rc;
    }
    if (chat) {
        rc = chat_lines(tok, force, gen_prompt, ids_out, add_special);
        us_tokenizer_free(tok);
        return rc;
    }
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    long lineno = 0;
    us_err e = {{0}};
    while ((r = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)r);
        if (!cJSON_IsString(j)) {
            fprintf(stderr, "unswag tokenize: <stdin>:%ld: expected a JSON string\n", lineno);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        int32_t *ids;
        size_t n;
        if (us_tokenizer_encode(tok, j->valuestring, strlen(j->valuestring), add_special, &ids, &n, &e)) {
            fprintf(stderr, "unswag tokenize: <stdin>:%ld: %s\n", lineno, e.msg);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        cJSON_Delete(j);
        fputc('[', stdout);
        for (size_t k = 0; k < n; k++) printf(k ? ",%d" : "%d", (int)ids[k]);
        fputs("]\n", stdout);
        free(ids);
    }
    free(line);
    fflush(stdout);
    us_tokenizer_free(tok);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    const char *path = NULL;
    bool skip = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_detokenize(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(a, "--skip-special")) skip = true;
        else if (!strcmp(a, "--jsonl")) continue;
        else {
            fprintf(stderr, "unswag detokenize: unknown or incomplete option '%s'\n", a);
            usage_detokenize(stderr);
            return 2;
        }
    }
    us_tokenizer *tok = NULL;
    int rc = load_tok("detokenize", path, &tok);
    if (rc) return rc;
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    long lineno = 0;
    us_err e = {{0}};
    int32_t *ids = NULL;
    size_t idcap = 0;
    while ((r = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)r);
        if (!cJSON_IsArray(j)) {
            fprintf(stderr, "unswag detokenize: <stdin>:%ld: expected a JSON array of ids\n", lineno);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        size_t n = 0;
        const cJSON *it;
        bool bad = false;
        cJSON_ArrayForEach(it, j) {
            if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int32_t)it->valuedouble) {
                bad = true;
                break;
            }
            if (n == idcap) {
                idcap = idcap ? idcap * 2 : 256;
                int32_t *np = realloc(ids, idcap * sizeof *np);
                if (!np) {
                    bad = true;
                    break;
                }
                ids = np;
            }
            ids[n++] = (int32_t)it->valuedouble;
        }
        cJSON_Delete(j);
        if (bad) {
            fprintf(stderr, "unswag detokenize: <stdin>:%ld: ids must be integers\n", lineno);
            rc = 1;
            break;
        }
        char *text;
        size_t tl;
        if (us_tokenizer_decode(tok, ids, n, skip, &text, &tl, &e)) {
            fprintf(stderr, "unswag detokenize: <stdin>:%ld: %s\n", lineno, e.msg);
            rc = 1;
            break;
        }
        json_write_string(stdout, text, tl);
        fputc('\n', stdout);
        free(text);
    }
    free(ids);
    free(line);
    fflush(stdout);
    us_tokenizer_free(tok);
    return rc;
}
