/* formats.c — dataset formats (see formats.h).
 *
 * Design: every JSONL row becomes a list of (text, trainable) segments — prompt parts not
 * trainable, completion parts trainable — each tokenized on its own (no special-token template)
 * and concatenated, so the label mask falls exactly on segment boundaries. Chat rows get their
 * segments from the chat template by rendering growing prefixes of the conversation: the
 * rendering up to an assistant turn with the generation prompt is the prompt; what the next
 * rendering adds is that turn. A template may re-render earlier turns once the conversation
 * grows (Qwen3 drops the <think> block of assistant turns before the last user query): when the
 * text already segmented is no longer a prefix of the new rendering, the row restarts from that
 * rendering, so the earlier turns become prompt (-100) and the row's text is always exactly the
 * rendering of the whole conversation. Rows are then EOS-terminated, length-checked and pushed. */
#include "data/formats.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/chat.h"
#include "tok/tok_internal.h"

typedef struct row {
    int32_t *ids, *labels;
    size_t n, cap;
} row;

static bool row_add(row *r, const int32_t *ids, size_t n, bool train) {
    if (r->n + n > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->n + n) cap *= 2;
        int32_t *a = realloc(r->ids, cap * sizeof *a);
        if (a) r->ids = a;
        int32_t *b = realloc(r->labels, cap * sizeof *b);
        if (b) r->labels = b;
        if (!a || !b) return false;
        r->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        r->ids[r->n + i] = ids[i];
        r->labels[r->n + i] = train ? ids[i] : US_IGNORE_INDEX;
    }
    r->n += n;
    return true;
}

static us_status seg(us_tokenizer *tok, row *r, const char *s, size_t n, bool train, const us_data_options *o,
                     const char *path, long line, us_err *e) {
    int32_t *ids;
    size_t k;
    us_status st = us_tokenizer_encode(tok, s, n, false, &ids, &k, e);
    if (st) {
        char m[sizeof e->msg];
        snprintf(m, sizeof m, "%s", e->msg);
        return us_fail(e, st, "%s:%ld: %s", path, line, m);
    }
    bool ok = row_add(r, ids, k, train || o->train_on_prompt);
    free(ids);
    return ok ? US_OK : us_fail(e, US_ENOMEM, "%s:%ld: out of memory", path, line);
}

static us_status finish(us_tokenizer *tok, row *r, us_data_options *o, bool eos, us_token_dataset *out,
                        const char *path, long line, us_err *e) {
    if (eos && !o->no_eos) {
        int32_t id = us_tokenizer_eos_id(tok);
        if (id < 0) return us_fail(e, US_EINVAL, "%s: the tokenizer has no EOS token", path);
        if (!row_add(r, &id, 1, true)) return us_fail(e, US_ENOMEM, "out of memory");
    }
    if (r->n == 0) return us_fail(e, US_EFORMAT, "%s:%ld: example is empty after tokenization", path, line);
    if (o->seq_len > 0 && r->n > (size_t)o->seq_len) {
        if (o->refuse_long)
            return us_fail(e, US_EINVAL, "%s:%ld: example has %zu tokens, more than --seq-len %d", path, line, r->n,
                           o->seq_len);
        r->n = (size_t)o->seq_len;
        o->n_truncated++;
    }
    bool any = false;
    for (size_t i = 0; i < r->n; i++) any = any || r->labels[i] != US_IGNORE_INDEX;
    if (!any) return us_fail(e, US_EFORMAT, "%s:%ld: no trainable tokens (prompt fills the row)", path, line);
    return us_token_dataset_push(out, r->ids, r->labels, (int64_t)r->n, e);
}

static const char *str_field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static us_status chat_row(us_tokenizer *tok, us_chat_template *ct, const cJSON *msgs, row *r, us_data_options *o,
                          const char *path, long line, us_err *e) {
    int n = cJSON_GetArraySize(msgs);
    size_t done = 0; /* bytes of the rendering already segmented */
    char *full = NULL, *prev = NULL;
    size_t full_n = 0;
    us_status st = US_OK;
    bool any_assistant = false;
    for (int i = 0; i < n && !st; i++) {
        const cJSON *m = cJSON_GetArrayItem(msgs, i);
        const char *role = str_field(m, "role");
        if (!role || strcmp(role, "assistant")) continue;
        any_assistant = true;
        cJSON *pre = cJSON_CreateArray(), *upto = cJSON_CreateArray();
        for (int k = 0; k <= i; k++) {
            if (k < i) cJSON_AddItemToArray(pre, cJSON_Duplicate(cJSON_GetArrayItem(msgs, k), 1));
            cJSON_AddItemToArray(upto, cJSON_Duplicate(cJSON_GetArrayItem(msgs, k), 1));
        }
        char *p = NULL;
        size_t pn = 0;
        free(full);
        full = NULL;
        if (i == 0) st = us_fail(e, US_EFORMAT, "%s:%ld: conversation starts with an assistant message", path, line);
        if (!st) st = us_chat_render(ct, pre, true, &p, &pn, e);
        if (!st) st = us_chat_render(ct, upto, false, &full, &full_n, e);
        cJSON_Delete(pre);
        cJSON_Delete(upto);
        if (st) {
            free(p);
            if (!strstr(e->msg, path)) {
                char msg[sizeof e->msg];
                snprintf(msg, sizeof msg, "%s", e->msg);
                us_fail(e, st, "%s:%ld: %s", path, line, msg);
            }
            break;
        }
        /* a template that always ends with the assistant header: that header is not this turn */
        static const char hdr[] = "<|start_header_id|>assistant<|end_header_id|>\n\n";
        if (pn >= sizeof hdr - 1 && full_n >= pn + sizeof hdr - 1 &&
            !memcmp(full + full_n - (sizeof hdr - 1), hdr, sizeof hdr - 1) &&
            !memcmp(p + pn - (sizeof hdr - 1), hdr, sizeof hdr - 1))
            full_n -= sizeof hdr - 1;
        if (full_n < pn || memcmp(p, full, pn) != 0)
            st = us_fail(e, US_EUNSUPPORTED, "%s:%ld: chat template output is not incremental at message %d", path,
                         line, i);
        if (!st && done && (pn < done || memcmp(p, prev, done) != 0)) { /* earlier turns re-rendered: restart */
            r->n = 0;
            done = 0;
        }
        if (!st) st = seg(tok, r, p + done, pn - done, false, o, path, line, e);
        if (!st) st = seg(tok, r, full + pn, full_n - pn, true, o, path, line, e);
        done = full_n;
        free(p);
        free(prev);
        prev = full; /* what is segmented so far is prev[0..done) */
        full = NULL;
    }
    free(full);
    free(prev);
    if (!st && !any_assistant) st = us_fail(e, US_EFORMAT, "%s:%ld: conversation has no assistant message", path, line);
    return st;
}

static const char ALPACA_IN[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char ALPACA_NOIN[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n%s\n\n### Response:\n";

static us_status load_txt(const char *path, us_tokenizer *tok, us_data_options *o, us_token_dataset *out, us_err *e) {
    char *txt;
    size_t n;
    us_status st = us_read_file(path, &txt, &n, e);
    if (st) return st;
    size_t bad;
    if (!us_utf8_valid(txt, n, &bad)) {
        free(txt);
        return us_fail(e, US_EFORMAT, "%s: invalid UTF-8 at byte %zu", path, bad);
    }
    int32_t *ids;
    size_t k;
    st = us_tokenizer_encode(tok, txt, n, true, &ids, &k, e);
    free(txt);
    if (st) return st;
    int32_t eos = us_tokenizer_eos_id(tok);
    size_t L = o->seq_len > 0 ? (size_t)o->seq_len : k + 1;
    if (!o->no_eos && eos >= 0) {
        int32_t *p = realloc(ids, (k + 1) * sizeof *p);
        if (!p) {
            free(ids);
            return us_fail(e, US_ENOMEM, "out of memory");
        }
        ids = p;
        ids[k++] = eos;
    }
    if (k == 0) st = us_fail(e, US_EFORMAT, "%s: empty dataset", path);
    for (size_t i = 0; i < k && !st; i += L) st = us_token_dataset_push(out, ids + i, NULL, (int64_t)US_MIN(L, k - i), e);
    free(ids);
    return st;
}

static us_status dataset_load(const char *path, us_tokenizer *tok, us_data_options *o, us_token_dataset *out,
                              us_err *e) {
    size_t pl = strlen(path);
    if (pl > 4 && !strcmp(path + pl - 4, ".txt")) return load_txt(path, tok, o, out, e);
    FILE *f = fopen(path, "rb");
    if (!f) return us_fail(e, US_EIO, "%s: cannot open", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long ln = 0;
    us_status st = US_OK;
    us_chat_template *ct = NULL;
    row r = {0};
    us_tbuf b = {0};
    while (!st && (len = getline(&line, &cap, f)) >= 0) {
        ln++;
        size_t k = (size_t)len;
        while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
        if (!k) continue;
        size_t bad;
        if (!us_utf8_valid(line, k, &bad)) {
            st = us_fail(e, US_EFORMAT, "%s:%ld: invalid UTF-8 at byte %zu of the line", path, ln, bad);
            break;
        }
        cJSON *j = cJSON_ParseWithLength(line, k);
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            st = us_fail(e, US_EFORMAT, "%s:%ld: malformed JSON (expected one object per line)", path, ln);
            break;
        }
        r.n = 0;
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
        const char *ins = str_field(j, "instruction"), *inp = str_field(j, "input"), *outp = str_field(j, "output");
        const char *pr = str_field(j, "prompt"), *co = str_field(j, "completion"), *tx = str_field(j, "text");
        if (cJSON_GetObjectItemCaseSensitive(j, "input_ids")) {
            st = us_fail(e, US_EFORMAT, "%s:%ld: pre-tokenized rows must not be mixed with text rows "
                         "(a file of input_ids rows is read as pre-tokenized)", path, ln);
            if (ln == 1 || out->n == 0) { /* the whole file is pre-tokenized */
                cJSON_Delete(j);
                free(line);
                fclose(f);
                return us_jsonl_tokens_load(path, us_tokenizer_vocab_size(tok), out, e);
            }
        } else if (cJSON_IsArray(msgs)) {
            if (!ct) st = us_chat_template_for(tok, o->chat_template, &ct, e);
            if (!st) st = chat_row(tok, ct, msgs, &r, o, path, ln, e);
            if (!st) st = finish(tok, &r, o, false, out, path, ln, e);
        } else if (ins || outp) {
            if (!ins || !outp) st = us_fail(e, US_EFORMAT, "%s:%ld: Alpaca rows need \"instruction\" and \"output\"", path, ln);
            else {
                b.n = 0;
                size_t need = strlen(ins) + (inp ? strlen(inp) : 0) + sizeof ALPACA_IN;
                if (!us_tbuf_reserve(&b, need)) st = us_fail(e, US_ENOMEM, "out of memory");
                else b.n = (size_t)snprintf(b.p, need + 1, inp && *inp ? ALPACA_IN : ALPACA_NOIN, ins, inp);
                if (!st) st = seg(tok, &r, b.p, b.n, false, o, path, ln, e);
                if (!st) st = seg(tok, &r, outp, strlen(outp), true, o, path, ln, e);
                if (!st) st = finish(tok, &r, o, true, out, path, ln, e);
            }
        } else if (pr || co) {
            if (!pr || !co) st = us_fail(e, US_EFORMAT, "%s:%ld: rows need both \"prompt\" and \"completion\"", path, ln);
            if (!st) st = seg(tok, &r, pr, strlen(pr), false, o, path, ln, e);
            if (!st) st = seg(tok, &r, co, strlen(co), true, o, path, ln, e);
            if (!st) st = finish(tok, &r, o, true, out, path, ln, e);
        } else if (tx) {
            st = seg(tok, &r, tx, strlen(tx), true, o, path, ln, e);
            if (!st) st = finish(tok, &r, o, true, out, path, ln, e);
        } else {
            st = us_fail(e, US_EFORMAT, "%s:%ld: no known fields (text, instruction/output, prompt/completion, messages, "
                         "input_ids)", path, ln);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    free(r.ids);
    free(r.labels);
    us_tbuf_free(&b);
    us_chat_template_free(ct);
    if (!st && out->n == 0) st = us_fail(e, US_EFORMAT, "%s: empty dataset", path);
    if (st) us_token_dataset_free(out);
    return st;
}

us_status us_dataset_load(const char *path, us_tokenizer *tok, us_data_options *o, us_token_dataset *out,
                          us_err *e) {
    memset(out, 0, sizeof *out);
    out->spill = o->spill; /* a token cache being built (data/cache.h): examples stream there */
    o->n_truncated = 0;
    us_status st = dataset_load(path, tok, o, out, e);
    out->spill = NULL;
    return st;
}
