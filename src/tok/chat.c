/* chat.c — chat templates: the model's own Jinja template, with faithful built-in renderers as
 * the fallback.
 *
 * Design: a template is first compiled by the Jinja-subset interpreter (tok/jinja.c) and rendered
 * with the context transformers' apply_chat_template gives it (messages, bos_token, eos_token,
 * add_generation_prompt, tools=None); tests compare that with transformers (Qwen3) and
 * transformers.js (Llama-3, Gemma-3) byte for byte. When the template uses a construct outside
 * the interpreter's subset (at compile or render time), the built-in renderer of the family it is
 * recognised as renders instead, and us_chat_template_engine() says so. An error the template
 * raises itself (raise_exception) is reported, not papered over.
 *
 * The built-in renderers: each supported family's template is re-expressed in C and
 * chosen by recognising the tokenizer's chat_template (its marker tokens: <|start_header_id|>,
 * <|im_start|> with or without <think>, <start_of_turn>, <<SYS>>, [INST]); `--chat-template NAME`
 * forces one. The renderers follow the shipped templates for plain conversations
 * (system/user/assistant messages with string content), byte for byte — tests compare them with
 * transformers.js apply_chat_template. What a template would reject (roles out of order) or what
 * these renderers do not cover (tool calls) is an error naming the message, not a guess. */
#include "tok/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/jinja.h"
#include "tok/tok_internal.h"

typedef enum { CT_NONE = -1, CT_LLAMA3, CT_CHATML, CT_QWEN3, CT_GEMMA, CT_LLAMA2, CT_MISTRAL } ct_kind;

typedef struct ct_state {
    char engine[320]; /* what rendered last: "jinja", "built-in qwen3", or a fallback with its reason */
} ct_state;

struct us_chat_template {
    ct_kind kind;    /* the built-in renderer (CT_NONE: none recognised) */
    bool always_gen; /* the template appends the assistant header unconditionally */
    char *bos, *eos;
    us_jinja *jinja; /* the model's own template, when the interpreter compiled it */
    ct_state *state; /* mutable through a const template: which engine rendered */
};

const char *const us_chat_builtin_names[] = {"llama3", "chatml", "qwen3", "gemma", "llama2", "mistral", NULL};

static char *dup_or_empty(const char *s) {
    size_t n = s ? strlen(s) : 0;
    char *p = malloc(n + 1);
    if (p) {
        if (n) memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

static us_status make(ct_kind k, bool always_gen, const char *bos, const char *eos, us_chat_template **out,
                      us_err *e) {
    us_chat_template *c = calloc(1, sizeof *c);
    if (!c) return us_fail(e, US_ENOMEM, "chat template: out of memory");
    c->kind = k;
    c->always_gen = always_gen;
    c->bos = dup_or_empty(bos);
    c->eos = dup_or_empty(eos);
    c->state = calloc(1, sizeof *c->state);
    if (c->state && k != CT_NONE) snprintf(c->state->engine, sizeof c->state->engine, "built-in %s", us_chat_builtin_names[k]);
    if (!c->bos || !c->eos || !c->state) {
        us_chat_template_free(c);
        return us_fail(e, US_ENOMEM, "chat template: out of memory");
    }
    *out = c;
    return US_OK;
}

static bool by_name(const char *name, ct_kind *k) {
    static const struct {
        const char *n;
        ct_kind k;
    } names[] = {{"llama3", CT_LLAMA3}, {"llama-3", CT_LLAMA3}, {"chatml", CT_CHATML}, {"qwen", CT_CHATML},
                 {"qwen2", CT_CHATML},  {"qwen3", CT_QWEN3},    {"gemma", CT_GEMMA},   {"gemma3", CT_GEMMA},
                 {"llama2", CT_LLAMA2}, {"llama-2", CT_LLAMA2}, {"mistral", CT_MISTRAL}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].n)) {
            *k = names[i].k;
            return true;
        }
    return false;
}

static us_status compile_named(const char *src, const char *name, const char *bos, const char *eos,
                               us_chat_template **out, us_err *e) {
    *out = NULL;
    if (!src) return us_fail(e, US_EINVAL, "chat template: none given");
    ct_kind k = CT_NONE;
    if (strstr(src, "<|start_header_id|>")) k = CT_LLAMA3;
    else if (strstr(src, "<|im_start|>")) k = strstr(src, "</think>") ? CT_QWEN3 : CT_CHATML;
    else if (strstr(src, "<start_of_turn>")) k = CT_GEMMA;
    else if (strstr(src, "<<SYS>>")) k = CT_LLAMA2;
    else if (strstr(src, "[INST]")) k = CT_MISTRAL;
    us_jinja *j = NULL;
    us_err je = {{0}};
    us_status js = us_jinja_compile(src, name, &j, &je);
    if (js && k == CT_NONE)
        return us_fail(e, js == US_ENOMEM ? js : US_EUNSUPPORTED,
                       "%s; the template is not one of the built-in families either (llama3, chatml, qwen3, gemma, "
                       "llama2, mistral): pass --chat-template NAME",
                       je.msg);
    us_status st = make(k, k == CT_LLAMA3 && !strstr(src, "add_generation_prompt"), bos, eos, out, e);
    if (st) {
        us_jinja_free(j);
        return st;
    }
    (*out)->jinja = j;
    if (j) snprintf((*out)->state->engine, sizeof (*out)->state->engine, "jinja");
    else
        snprintf((*out)->state->engine, sizeof (*out)->state->engine, "built-in %s (template not interpreted: %.240s)",
                 us_chat_builtin_names[k], je.msg);
    return US_OK;
}

us_status us_chat_template_compile(const char *src, const char *bos, const char *eos, us_chat_template **out,
                                   us_err *e) {
    return compile_named(src, "chat_template", bos, eos, out, e);
}

const char *us_chat_template_engine(const us_chat_template *ct) { return ct->state->engine; }

us_status us_chat_template_for(const us_tokenizer *tok, const char *force, us_chat_template **out, us_err *e) {
    *out = NULL;
    const char *bos = us_tokenizer_bos_token(tok), *eos = us_tokenizer_eos_token(tok);
    if (force) {
        ct_kind k;
        if (by_name(force, &k)) return make(k, false, bos, eos, out, e);
        char *src = NULL;
        size_t n;
        us_err fe;
        if (us_read_file(force, &src, &n, &fe))
            return us_fail(e, US_EINVAL, "--chat-template %s: neither a built-in name (llama3, chatml, qwen3, gemma, "
                                         "llama2, mistral) nor a readable file", force);
        us_status st = compile_named(src, force, bos, eos, out, e);
        free(src);
        return st;
    }
    const char *src = us_tokenizer_chat_template(tok);
    if (!src)
        return us_fail(e, US_EINVAL, "%s: no chat_template in tokenizer_config.json; pass --chat-template NAME",
                       us_tokenizer_path(tok));
    char name[600];
    snprintf(name, sizeof name, "%s: chat_template", us_tokenizer_path(tok));
    return compile_named(src, name, bos, eos, out, e);
}

void us_chat_template_free(us_chat_template *c) {
    if (!c) return;
    free(c->bos);
    free(c->eos);
    us_jinja_free(c->jinja);
    free(c->state);
    free(c);
}

/* ---------------------------------------------------------------- string helpers */

static bool is_ws(uint32_t c) { return us_is_white_space(c) || c == 0xFEFF; }

/* Python str.strip() (Jinja's trim filter) on s[0..n): returns the kept range. */
static void trim_range(const char *s, size_t n, size_t *a, size_t *b, bool left, bool right, const char *chars) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, j = n;
    while (left && i < j) {
        uint32_t cp;
        size_t k = us_utf8_decode(p + i, j - i, &cp);
        if (!k) break;
        if (chars ? !(cp < 128 && strchr(chars, (int)cp)) : !is_ws(cp)) break;
        i += k;
    }
    while (right && j > i) {
        size_t st = j - 1;
        while (st > i && (p[st] & 0xC0) == 0x80) st--;
        uint32_t cp;
        size_t k = us_utf8_decode(p + st, j - st, &cp);
        if (!k) break;
        if (chars ? !(cp < 128 && strchr(chars, (int)cp)) : !is_ws(cp)) break;
        j = st;
    }
    *a = i;
    *b = j;
}

static bool add_s(us_tbuf *o, const char *s) { return us_tbuf_add(o, s, strlen(s)); }
static bool add_trim(us_tbuf *o, const char *s, bool l, bool r, const char *chars) {
    size_t a, b;
    trim_range(s, strlen(s), &a, &b, l, r, chars);
    return us_tbuf_add(o, s + a, b - a);
}

typedef struct msg {
    const char *role;
    const char *content;
    const char *reasoning;
    char *owned; /* content joined from a list of parts */
} msg;

static us_status get_messages(const cJSON *arr, msg **out, size_t *n, us_err *e) {
    *out = NULL;
    *n = 0;
    if (!cJSON_IsArray(arr)) return us_fail(e, US_EFORMAT, "messages must be a list");
    size_t cnt = (size_t)cJSON_GetArraySize(arr);
    if (!cnt) return us_fail(e, US_EFORMAT, "messages is empty");
    msg *m = calloc(cnt, sizeof *m);
    if (!m) return us_fail(e, US_ENOMEM, "out of memory");
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "role");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *rc = cJSON_GetObjectItemCaseSensitive(it, "reasoning_content");
        if (!cJSON_IsString(r)) {
            for (size_t k = 0; k < i; k++) free(m[k].owned);
            free(m);
            return us_fail(e, US_EFORMAT, "messages[%zu]: missing \"role\" string", i);
        }
        m[i].role = r->valuestring;
        m[i].reasoning = cJSON_IsString(rc) ? rc->valuestring : NULL;
        if (cJSON_IsString(c)) m[i].content = c->valuestring;
        else if (cJSON_IsArray(c)) { /* [{"type": "text", "text": ...}] */
            us_tbuf b = {0};
            const cJSON *p;
            cJSON_ArrayForEach(p, c) {
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(p, "text");
                if (cJSON_IsString(tx)) add_s(&b, tx->valuestring);
            }
            if (!b.p) add_s(&b, "");
            m[i].owned = b.p;
            m[i].content = b.p ? b.p : "";
        } else {
            for (size_t k = 0; k < i; k++) free(m[k].owned);
            free(m);
            return us_fail(e, US_EFORMAT, "messages[%zu]: missing \"content\" string", i);
        }
        i++;
    }
    *out = m;
    *n = cnt;
    return US_OK;
}

static bool is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* ---------------------------------------------------------------- renderers */

static us_status r_llama3(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (i == 0) ok = add_s(o, c->bos);
        ok = ok && add_s(o, "<|start_header_id|>") && add_s(o, m[i].role) && add_s(o, "<|end_header_id|>\n\n") &&
             add_trim(o, m[i].content, true, true, NULL) && add_s(o, "<|eot_id|>");
    }
    if (ok && (gen || c->always_gen)) ok = add_s(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

static us_status r_chatml(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        ok = add_s(o, "<|im_start|>") && add_s(o, m[i].role) && add_s(o, "\n") && add_s(o, m[i].content) &&
             add_s(o, "<|im_end|>\n");
    if (ok && gen) ok = add_s(o, "<|im_start|>assistant\n");
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }
static bool ends_with(const char *s, const char *p) {
    size_t a = strlen(s), b = strlen(p);
    return a >= b && memcmp(s + a - b, p, b) == 0;
}

static us_status r_qwen3(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    bool ok = true;
    if (is(m[0].role, "system"))
        ok = add_s(o, "<|im_start|>system\n") && add_s(o, m[0].content) && add_s(o, "<|im_end|>\n");
    size_t last_query = n - 1;
    for (size_t k = n; k-- > 0;)
        if (is(m[k].role, "user") &&
            !(starts_with(m[k].content, "<tool_response>") && ends_with(m[k].content, "</tool_response>"))) {
            last_query = k;
            break;
        }
    us_tbuf tmp = {0};
    for (size_t i = 0; i < n && ok; i++) {
        const char *role = m[i].role, *content = m[i].content;
        if (is(role, "user") || (is(role, "system") && i > 0)) {
            ok = add_s(o, "<|im_start|>") && add_s(o, role) && add_s(o, "\n") && add_s(o, content) &&
                 add_s(o, "<|im_end|>\n");
        } else if (is(role, "assistant")) {
            /* content after </think>, reasoning between <think> and </think> */
            const char *body = content;
            size_t body_n = strlen(content);
            const char *reason = m[i].reasoning ? m[i].reasoning : "";
            size_t reason_n = strlen(reason);
            const char *close = strstr(content, "</think>");
            if (!m[i].reasoning && close) {
                const char *lastc = close, *p;
                while ((p = strstr(lastc + 1, "</think>"))) lastc = p;
                body = lastc + 8;
                while (*body == '\n') body++;
                body_n = strlen(body);
                /* reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                size_t first_n = (size_t)(close - content);
                while (first_n && content[first_n - 1] == '\n') first_n--;
                const char *rs = content, *q = content;
                while ((q = strstr(q, "<think>")) && q < content + first_n) rs = q + 7, q++;
                if (rs > content + first_n) rs = content + first_n;
                while (rs < content + first_n && *rs == '\n') rs++;
                reason = rs;
                reason_n = (size_t)(content + first_n - rs);
            }
            ok = add_s(o, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reason_n)) {
                tmp.n = 0;
                ok = ok && us_tbuf_add(&tmp, reason, reason_n);
                ok = ok && add_s(o, "<think>\n") && (tmp.p ? add_trim(o, tmp.p, true, true, "\n") : true) &&
                     add_s(o, "\n</think>\n\n");
                while (body_n && *body == '\n') body++, body_n--;
            }
            ok = ok && us_tbuf_add(o, body, body_n) && add_s(o, "<|im_end|>\n");
        } else if (!(is(role, "system") && i == 0)) {
            us_tbuf_free(&tmp);
            return us_fail(e, US_EUNSUPPORTED, "messages[%zu]: role \"%s\" is not supported by the qwen3 renderer", i,
                           role);
        }
    }
    us_tbuf_free(&tmp);
    if (ok && gen) ok = add_s(o, "<|im_start|>assistant\n");
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

static us_status r_gemma(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    bool ok = add_s(o, c->bos);
    size_t start = 0;
    const char *prefix = NULL;
    if (is(m[0].role, "system")) prefix = m[0].content, start = 1;
    for (size_t i = start; i < n && ok; i++) {
        size_t k = i - start;
        if (is(m[i].role, "user") != (k % 2 == 0))
            return us_fail(e, US_EINVAL, "messages[%zu]: Conversation roles must alternate user/assistant/user/assistant/...", i);
        ok = add_s(o, "<start_of_turn>") && add_s(o, is(m[i].role, "assistant") ? "model" : m[i].role) &&
             add_s(o, "\n");
        if (ok && k == 0 && prefix) ok = add_s(o, prefix) && add_s(o, "\n\n");
        ok = ok && add_trim(o, m[i].content, true, true, NULL) && add_s(o, "<end_of_turn>\n");
    }
    if (ok && gen) ok = add_s(o, "<start_of_turn>model\n");
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

/* Llama-2-chat: [INST] <<SYS>> ... <</SYS>> user [/INST] answer </s><s>[INST] ... */
static us_status r_llama2(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    size_t start = 0;
    const char *sys = NULL;
    if (is(m[0].role, "system")) sys = m[0].content, start = 1;
    bool ok = true;
    for (size_t i = start; i < n && ok; i++) {
        size_t k = i - start;
        if (is(m[i].role, "user") != (k % 2 == 0))
            return us_fail(e, US_EINVAL, "messages[%zu]: Conversation roles must alternate user/assistant/user/assistant/...", i);
        if (is(m[i].role, "user")) {
            ok = add_s(o, c->bos) && add_s(o, "[INST] ");
            if (ok && k == 0 && sys)
                ok = add_s(o, "<<SYS>>\n") && add_s(o, sys) && add_s(o, "\n<</SYS>>\n\n") && add_trim(o, m[i].content, true, true, NULL);
            else ok = ok && add_trim(o, m[i].content, true, true, NULL);
            ok = ok && add_s(o, " [/INST]");
        } else {
            ok = add_s(o, " ") && add_trim(o, m[i].content, true, true, NULL) && add_s(o, " ") && add_s(o, c->eos);
        }
    }
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

/* Mistral-Instruct v0.1/v0.2: <s>[INST] user [/INST]answer</s>[INST] ... */
static us_status r_mistral(const us_chat_template *c, const msg *m, size_t n, bool gen, us_tbuf *o, us_err *e) {
    bool ok = add_s(o, c->bos);
    for (size_t i = 0; i < n && ok; i++) {
        if (is(m[i].role, "user") != (i % 2 == 0))
            return us_fail(e, US_EINVAL, "messages[%zu]: Conversation roles must alternate user/assistant/user/assistant/...", i);
        if (is(m[i].role, "user")) ok = add_s(o, "[INST] ") && add_s(o, m[i].content) && add_s(o, " [/INST]");
        else ok = add_s(o, m[i].content) && add_s(o, c->eos);
    }
    return ok ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

us_status us_chat_render(const us_chat_template *c, const cJSON *messages, bool gen, char **out, size_t *len,
                         us_err *e) {
    *out = NULL;
    msg *m;
    size_t n;
    us_status st = get_messages(messages, &m, &n, e);
    if (st) return st;
    us_tbuf o = {0};
    if (c->jinja) {
        cJSON *ctx = cJSON_CreateObject();
        bool ok = ctx && cJSON_AddItemToObject(ctx, "messages", cJSON_Duplicate(messages, 1)) &&
                  cJSON_AddStringToObject(ctx, "bos_token", c->bos) && cJSON_AddStringToObject(ctx, "eos_token", c->eos) &&
                  cJSON_AddBoolToObject(ctx, "add_generation_prompt", gen) && cJSON_AddNullToObject(ctx, "tools") &&
                  cJSON_AddNullToObject(ctx, "documents");
        char *text = NULL;
        size_t tn = 0;
        us_err je = {{0}};
        st = ok ? us_jinja_render(c->jinja, ctx, &text, &tn, &je) : us_fail(&je, US_ENOMEM, "out of memory");
        cJSON_Delete(ctx);
        if (!st || st != US_EUNSUPPORTED || c->kind == CT_NONE) {
            for (size_t i = 0; i < n; i++) free(m[i].owned);
            free(m);
            if (st) return us_fail(e, st, "%s", je.msg);
            snprintf(c->state->engine, sizeof c->state->engine, "jinja");
            *out = text;
            if (len) *len = tn;
            return US_OK;
        }
        snprintf(c->state->engine, sizeof c->state->engine, "built-in %s (template not interpreted: %.240s)",
                 us_chat_builtin_names[c->kind], je.msg);
        st = US_OK;
    }
    switch (c->kind) {
    case CT_NONE: break;
    case CT_LLAMA3: st = r_llama3(c, m, n, gen, &o, e); break;
    case CT_CHATML: st = r_chatml(c, m, n, gen, &o, e); break;
    case CT_QWEN3: st = r_qwen3(c, m, n, gen, &o, e); break;
    case CT_GEMMA: st = r_gemma(c, m, n, gen, &o, e); break;
    case CT_LLAMA2: st = r_llama2(c, m, n, gen, &o, e); break;
    case CT_MISTRAL: st = r_mistral(c, m, n, gen, &o, e); break;
    }
    for (size_t i = 0; i < n; i++) free(m[i].owned);
    free(m);
    if (!st && !o.p && !us_tbuf_add(&o, "", 0)) st = us_fail(e, US_ENOMEM, "out of memory");
    if (st) {
        us_tbuf_free(&o);
        return st;
    }
    *out = o.p;
    if (len) *len = o.n;
    return US_OK;
}
