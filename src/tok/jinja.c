/* jinja.c — the Jinja-subset interpreter behind chat templates (see jinja.h for the contract).
 *
 * Design, in three stages that share one error path:
 *  - lexer: splits the source into text and tags, applying whitespace control as transformers'
 *    environment does (`-` strips all whitespace on its side; lstrip_blocks removes spaces/tabs
 *    before a {% %} or {# #} tag that starts its line; trim_blocks removes the newline after one),
 *    and tokenizes the inside of tags (names, numbers, strings with Python escapes, operators);
 *  - parser: recursive descent into one generic AST node type, following Jinja's precedence
 *    (ternary < or < and < not < comparisons/in/is < ~ < + - < * / // % < ** < unary < postfix and
 *    filters). Unknown statements, filters and tests are rejected here as US_EUNSUPPORTED;
 *  - evaluator: walks the AST with values (undefined/none/bool/int/float/str/list/dict/namespace)
 *    that live in a per-render arena, so nothing is freed piecemeal. Variables live in a scope
 *    stack: a for-loop iteration opens a scope (so `set` inside a loop does not leak, as in Jinja),
 *    if-blocks do not. Strings are UTF-8 and measured, indexed and sliced in code points, as Python
 *    does.
 * Errors anywhere format a message (source name, line:column) and longjmp back to the entry point;
 * that is safe because every allocation belongs to an arena or to the output buffer, which the
 * entry point frees. Limits: nesting depth (parse and evaluation), total loop iterations, arena
 * bytes and output bytes. */
#include "tok/jinja.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok/tok_internal.h"
#include "tok/tokenizer.h"

#define J_MAX_DEPTH 200
#define J_MAX_ITERS 1000000L
#define J_MAX_ARENA ((size_t)256 << 20)
#define J_MAX_OUT ((size_t)256 << 20)

/* ---------------------------------------------------------------- arena */

typedef struct ablk {
    struct ablk *next;
    size_t used, cap;
    max_align_t data[];
} ablk;

typedef struct arena {
    ablk *head;
    size_t total;
} arena;

static void arena_free(arena *a) {
    for (ablk *b = a->head, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}

/* NULL when out of memory or over J_MAX_ARENA. */
static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!n) n = 16;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > J_MAX_ARENA) return NULL;
        ablk *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

/* ---------------------------------------------------------------- values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS };

typedef struct jv jv;
typedef struct jlist jlist;
typedef struct jdict jdict;

struct jv {
    int t;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        jlist *l;
        jdict *d;
    };
};

struct jlist {
    size_t n;
    jv *v;
};

struct jdict {
    size_t n, cap;
    jv *k, *v;
};

/* ---------------------------------------------------------------- shared error state */

typedef struct jctx {
    const char *src, *name;
    arena *ar;
    us_err *e;
    jmp_buf jb;
    us_status st;
} jctx;

static void pos_of(const char *src, size_t pos, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos && src[i]; i++) {
        if (src[i] == '\n') ++*line, *col = 1;
        else if (((unsigned char)src[i] & 0xC0) != 0x80) ++*col;
    }
}

__attribute__((noreturn, format(printf, 4, 5))) static void jfail(jctx *c, size_t pos, us_status st,
                                                                   const char *fmt, ...) {
    char m[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    int line, col;
    pos_of(c->src, pos, &line, &col);
    us_fail(c->e, st, "%s:%d:%d: %s", c->name, line, col, m);
    c->st = st;
    longjmp(c->jb, 1);
}

static void *jalloc(jctx *c, size_t n, size_t pos) {
    void *p = arena_alloc(c->ar, n);
    if (!p) jfail(c, pos, US_ENOMEM, "out of memory (template working memory is capped at %zu MiB)", J_MAX_ARENA >> 20);
    return p;
}

static char *jstrdup(jctx *c, const char *s, size_t n, size_t pos) {
    char *p = jalloc(c, n + 1, pos);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---------------------------------------------------------------- lexer */

enum {
    T_EOF, T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STR, T_INT, T_FLOAT, T_OP
};

typedef struct tok {
    int t;
    size_t pos;
    const char *s; /* text, name, decoded string, or operator spelling */
    size_t n;
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    jctx *c;
    tok *v;
    size_t n, cap;
} lexer;

static void push_tok(lexer *L, tok t) {
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        tok *nv = jalloc(L->c, cap * sizeof *nv, t.pos);
        if (L->n) memcpy(nv, L->v, L->n * sizeof *nv);
        L->v = nv;
        L->cap = cap;
    }
    L->v[L->n++] = t;
}

static bool is_space_c(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
static bool is_name0(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* A string literal starting at src[*i] (a quote): Python escapes decoded. */
static void lex_string(lexer *L, size_t *i) {
    jctx *c = L->c;
    const char *s = c->src;
    size_t start = *i;
    char q = s[(*i)++];
    us_tbuf b = {0};
    while (s[*i] && s[*i] != q) {
        char ch = s[*i];
        if (ch == '\\' && s[*i + 1]) {
            char x = s[*i + 1];
            *i += 2;
            uint32_t cp = 0;
            int hex = 0;
            switch (x) {
            case 'n': ch = '\n'; break;
            case 't': ch = '\t'; break;
            case 'r': ch = '\r'; break;
            case '0': ch = 0; break;
            case 'a': ch = 7; break;
            case 'b': ch = 8; break;
            case 'f': ch = 12; break;
            case 'v': ch = 11; break;
            case '\\': case '\'': case '"': ch = x; break;
            case '\n': continue;
            case 'x': hex = 2; break;
            case 'u': hex = 4; break;
            case 'U': hex = 8; break;
            default: /* unknown escapes stay as written */
                if (!us_tbuf_addc(&b, '\\')) goto oom;
                ch = x;
            }
            if (hex) {
                for (int k = 0; k < hex; k++, (*i)++) {
                    char h = s[*i];
                    int d = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
                    if (d < 0) {
                        us_tbuf_free(&b);
                        jfail(c, start, US_EFORMAT, "bad \\%c escape in string literal", x);
                    }
                    cp = cp * 16 + (uint32_t)d;
                }
                char enc[4];
                size_t k = cp <= 0x10FFFF ? us_utf8_encode(cp, enc) : 0;
                if (!k || !us_tbuf_add(&b, enc, k)) {
                    us_tbuf_free(&b);
                    jfail(c, start, US_EFORMAT, "bad code point in string literal");
                }
                continue;
            }
            if (!us_tbuf_addc(&b, ch)) goto oom;
            continue;
        }
        if (!us_tbuf_addc(&b, ch)) goto oom;
        (*i)++;
    }
    if (s[*i] != q) {
        us_tbuf_free(&b);
        jfail(c, start, US_EFORMAT, "unterminated string literal");
    }
    (*i)++;
    tok t = {.t = T_STR, .pos = start, .n = b.n};
    t.s = jstrdup(c, b.p ? b.p : "", b.n, start);
    us_tbuf_free(&b);
    push_tok(L, t);
    return;
oom:
    us_tbuf_free(&b);
    jfail(c, start, US_ENOMEM, "out of memory");
}

static void lex(lexer *L) {
    jctx *c = L->c;
    const char *s = c->src;
    size_t n = strlen(s), i = 0;
    bool strip_next = false, trim_next = false; /* from the previous tag's end */
    while (i < n || strip_next || trim_next) {
        /* text up to the next tag opener */
        size_t ts = i, te = i;
        while (te < n && !(s[te] == '{' && (s[te + 1] == '{' || s[te + 1] == '%' || s[te + 1] == '#'))) te++;
        if (strip_next)
            while (ts < te && is_space_c(s[ts])) ts++;
        else if (trim_next) {
            if (ts < te && s[ts] == '\n') ts++;
            else if (ts + 1 < te && s[ts] == '\r' && s[ts + 1] == '\n') ts += 2;
        }
        strip_next = trim_next = false;
        size_t tend = te;
        if (te < n) {
            char kind = s[te + 1], mod = s[te + 2];
            if (mod == '-')
                while (tend > ts && is_space_c(s[tend - 1])) tend--;
            else if (kind != '{' && mod != '+') { /* lstrip_blocks */
                size_t k = tend;
                while (k > ts && (s[k - 1] == ' ' || s[k - 1] == '\t')) k--;
                if (k == 0 || s[k - 1] == '\n') tend = k;
            }
        }
        if (tend > ts) push_tok(L, (tok){.t = T_TEXT, .pos = ts, .s = s + ts, .n = tend - ts});
        if (te >= n) break;
        /* a tag */
        char kind = s[te + 1];
        size_t tag = te;
        i = te + 2;
        if (s[i] == '-' || s[i] == '+') i++;
        if (kind == '#') {
            const char *endc = strstr(s + i, "#}");
            if (!endc) jfail(c, tag, US_EFORMAT, "unterminated comment (no #})");
            size_t ce = (size_t)(endc - s);
            strip_next = ce > i && s[ce - 1] == '-';
            trim_next = !strip_next;
            i = ce + 2;
            continue;
        }
        push_tok(L, (tok){.t = kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, .pos = tag});
        char close = kind == '{' ? '}' : '%';
        int balance = 0; /* open ( [ {: a '}}' inside a dict literal does not end the tag */
        for (;;) {
            while (i < n && is_space_c(s[i])) i++;
            if (i >= n)
                jfail(c, tag, US_EFORMAT, "unterminated %s (no %s)", kind == '{' ? "{{" : "{%", kind == '{' ? "}}" : "%}");
            if (!balance && s[i] == '-' && s[i + 1] == close && s[i + 2] == '}') {
                strip_next = true;
                i += 3;
                break;
            }
            if (!balance && s[i] == close && s[i + 1] == '}') {
                trim_next = kind == '%';
                i += 2;
                break;
            }
            size_t p = i;
            char ch = s[i];
            if (is_name0(ch)) {
                while (is_name0(s[i]) || is_digit(s[i])) i++;
                push_tok(L, (tok){.t = T_NAME, .pos = p, .s = s + p, .n = i - p});
            } else if (is_digit(ch)) {
                while (is_digit(s[i]) || s[i] == '_') i++;
                bool fl = false;
                if (s[i] == '.' && is_digit(s[i + 1])) {
                    fl = true;
                    i++;
                    while (is_digit(s[i]) || s[i] == '_') i++;
                }
                if ((s[i] == 'e' || s[i] == 'E') && (is_digit(s[i + 1]) || ((s[i + 1] == '-' || s[i + 1] == '+') && is_digit(s[i + 2])))) {
                    fl = true;
                    i += 2;
                    while (is_digit(s[i])) i++;
                }
                char buf[64];
                size_t k = 0;
                for (size_t q = p; q < i && k < sizeof buf - 1; q++)
                    if (s[q] != '_') buf[k++] = s[q];
                buf[k] = 0;
                tok t = {.t = fl ? T_FLOAT : T_INT, .pos = p};
                if (fl) t.f = strtod(buf, NULL);
                else {
                    char *end;
                    errno = 0;
                    long long v = strtoll(buf, &end, 10);
                    if (errno || i - p > 18) jfail(c, p, US_EUNSUPPORTED, "integer literal too large");
                    t.i = v;
                }
                push_tok(L, t);
            } else if (ch == '\'' || ch == '"') {
                lex_string(L, &i);
            } else {
                static const char *ops[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", ".",
                                            ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "=", NULL};
                size_t k;
                for (k = 0; ops[k]; k++)
                    if (!strncmp(s + i, ops[k], strlen(ops[k]))) break;
                if (!ops[k]) jfail(c, p, US_EFORMAT, "unexpected character '%c'", ch);
                if (strchr("([{", ops[k][0]) && !ops[k][1]) balance++;
                else if (strchr(")]}", ops[k][0]) && !ops[k][1] && balance) balance--;
                push_tok(L, (tok){.t = T_OP, .pos = p, .s = ops[k], .n = strlen(ops[k])});
                i += strlen(ops[k]);
            }
        }
        push_tok(L, (tok){.t = kind == '{' ? T_VAR_END : T_BLOCK_END, .pos = i - 2});
    }
    push_tok(L, (tok){.t = T_EOF, .pos = n});
}

/* ---------------------------------------------------------------- AST */

enum {
    /* expressions */
    N_LIT, N_NAME, N_LIST, N_DICT, N_ATTR, N_INDEX, N_SLICE, N_CALL, N_KWARG, N_FILTER, N_TEST, N_NEG, N_POS, N_BIN,
    N_AND, N_OR, N_NOT, N_CMP, N_COND,
    /* statements */
    N_BLOCK, N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_BREAK, N_CONTINUE
};

typedef struct node node;
struct node {
    int k, op;          /* op: operator token index for N_BIN/N_CMP; negation for N_TEST */
    size_t pos;
    node *a, *b, *c, *d;
    node **kids;
    size_t nk;
    const char *s, *s2; /* names */
    size_t sn, s2n;
    jv lit;
};

typedef struct parser {
    jctx *c;
    tok *t;
    size_t i;
    int depth;
} parser;

static node *mk(parser *P, int k, size_t pos) {
    node *x = jalloc(P->c, sizeof *x, pos);
    memset(x, 0, sizeof *x);
    x->k = k;
    x->pos = pos;
    return x;
}

static tok *peek(parser *P) { return &P->t[P->i]; }
static bool is_op(const tok *t, const char *op) { return t->t == T_OP && !strcmp(t->s, op); }
static bool is_name(const tok *t, const char *nm) { return t->t == T_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n); }
static bool accept_op(parser *P, const char *op) {
    if (!is_op(peek(P), op)) return false;
    P->i++;
    return true;
}
static bool accept_name(parser *P, const char *nm) {
    if (!is_name(peek(P), nm)) return false;
    P->i++;
    return true;
}
static void expect_op(parser *P, const char *op) {
    if (!accept_op(P, op)) jfail(P->c, peek(P)->pos, US_EFORMAT, "expected '%s'", op);
}
static tok *expect_name(parser *P) {
    tok *t = peek(P);
    if (t->t != T_NAME) jfail(P->c, t->pos, US_EFORMAT, "expected a name");
    P->i++;
    return t;
}

typedef struct kidv {
    node **v;
    size_t n, cap;
} kidv;

static void kid_push(parser *P, kidv *k, node *x) {
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 4;
        node **nv = jalloc(P->c, cap * sizeof *nv, x->pos);
        if (k->n) memcpy(nv, k->v, k->n * sizeof *nv);
        k->v = nv;
        k->cap = cap;
    }
    k->v[k->n++] = x;
}

static void enter(parser *P) {
    if (++P->depth > J_MAX_DEPTH) jfail(P->c, peek(P)->pos, US_EUNSUPPORTED, "template nested too deeply (over %d levels)", J_MAX_DEPTH);
}

static node *p_expr(parser *P);
static node *p_ternary(parser *P, bool allow_cond);

static const char *const filters[] = {"trim", "length", "count", "tojson", "upper", "lower", "replace", "join",
                                      "default", "d", "first", "last", "list", "items", "string", "int", "float",
                                      "safe", "capitalize", "title", "map", "select", "reject", "selectattr",
                                      "rejectattr", "reverse", "abs", "indent", "unique", "sum", "min", "max", NULL};
static const char *const tests[] = {"defined", "undefined", "none", "string", "mapping", "iterable", "sequence",
                                    "number", "integer", "float", "boolean", "true", "false", "eq", "equalto",
                                    "==", "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in", "odd",
                                    "even", "divisibleby", "callable", "sameas", "lower", "upper", NULL};

static bool in_list(const char *const *l, const char *s, size_t n) {
    for (; *l; l++)
        if (strlen(*l) == n && !memcmp(*l, s, n)) return true;
    return false;
}

static void p_args(parser *P, node *call) { /* after '(' */
    kidv k = {0};
    while (!accept_op(P, ")")) {
        if (k.n) expect_op(P, ",");
        if (accept_op(P, ")")) break;
        tok *t = peek(P);
        if (t->t == T_NAME && is_op(&P->t[P->i + 1], "=")) {
            P->i += 2;
            node *kw = mk(P, N_KWARG, t->pos);
            kw->s = t->s;
            kw->sn = t->n;
            kw->a = p_expr(P);
            kid_push(P, &k, kw);
        } else
            kid_push(P, &k, p_expr(P));
    }
    call->kids = k.v;
    call->nk = k.n;
}

static node *p_primary(parser *P) {
    tok *t = peek(P);
    node *x;
    if (t->t == T_STR) {
        x = mk(P, N_LIT, t->pos);
        x->lit = (jv){.t = V_STR, .s = {t->s, t->n}};
        P->i++;
        /* adjacent string literals concatenate */
        while (peek(P)->t == T_STR) {
            tok *u = peek(P);
            char *j = jalloc(P->c, x->lit.s.n + u->n + 1, u->pos);
            memcpy(j, x->lit.s.p, x->lit.s.n);
            memcpy(j + x->lit.s.n, u->s, u->n);
            j[x->lit.s.n + u->n] = 0;
            x->lit.s.p = j;
            x->lit.s.n += u->n;
            P->i++;
        }
        return x;
    }
    if (t->t == T_INT || t->t == T_FLOAT) {
        x = mk(P, N_LIT, t->pos);
        x->lit = t->t == T_INT ? (jv){.t = V_INT, .i = t->i} : (jv){.t = V_FLOAT, .f = t->f};
        P->i++;
        return x;
    }
    if (t->t == T_NAME) {
        P->i++;
        x = mk(P, N_LIT, t->pos);
        if (is_name(t, "true") || is_name(t, "True")) x->lit = (jv){.t = V_BOOL, .b = true};
        else if (is_name(t, "false") || is_name(t, "False")) x->lit = (jv){.t = V_BOOL, .b = false};
        else if (is_name(t, "none") || is_name(t, "None")) x->lit = (jv){.t = V_NONE};
        else {
            x->k = N_NAME;
            x->s = t->s;
            x->sn = t->n;
        }
        return x;
    }
    if (is_op(t, "(")) {
        P->i++;
        enter(P);
        if (accept_op(P, ")")) { /* empty tuple */
            P->depth--;
            return mk(P, N_LIST, t->pos);
        }
        x = p_expr(P);
        if (is_op(peek(P), ",")) { /* a tuple: a list for our purposes */
            kidv k = {0};
            kid_push(P, &k, x);
            while (accept_op(P, ",")) {
                if (is_op(peek(P), ")")) break;
                kid_push(P, &k, p_expr(P));
            }
            x = mk(P, N_LIST, t->pos);
            x->kids = k.v;
            x->nk = k.n;
        }
        expect_op(P, ")");
        P->depth--;
        return x;
    }
    if (is_op(t, "[")) {
        P->i++;
        enter(P);
        kidv k = {0};
        while (!accept_op(P, "]")) {
            if (k.n) expect_op(P, ",");
            if (accept_op(P, "]")) break;
            kid_push(P, &k, p_expr(P));
        }
        x = mk(P, N_LIST, t->pos);
        x->kids = k.v;
        x->nk = k.n;
        P->depth--;
        return x;
    }
    if (is_op(t, "{")) {
        P->i++;
        enter(P);
        kidv k = {0};
        while (!accept_op(P, "}")) {
            if (k.n) expect_op(P, ",");
            if (accept_op(P, "}")) break;
            kid_push(P, &k, p_expr(P));
            expect_op(P, ":");
            kid_push(P, &k, p_expr(P));
        }
        x = mk(P, N_DICT, t->pos);
        x->kids = k.v;
        x->nk = k.n;
        P->depth--;
        return x;
    }
    if (t->t == T_EOF) jfail(P->c, t->pos, US_EFORMAT, "unexpected end of template");
    jfail(P->c, t->pos, US_EFORMAT, "unexpected %s", t->t == T_OP ? t->s : t->t == T_TEXT ? "text" : "end of tag");
}

static node *p_filter_test(parser *P, node *x);

static node *p_postfix(parser *P, node *x) {
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, ".")) {
            P->i++;
            tok *nm = peek(P);
            node *y = mk(P, N_ATTR, t->pos);
            y->a = x;
            if (nm->t == T_INT) { /* x.0 */
                y->k = N_INDEX;
                y->b = mk(P, N_LIT, nm->pos);
                y->b->lit = (jv){.t = V_INT, .i = nm->i};
                P->i++;
            } else {
                nm = expect_name(P);
                y->s = nm->s;
                y->sn = nm->n;
            }
            x = y;
        } else if (is_op(t, "[")) {
            P->i++;
            enter(P);
            node *parts[3] = {NULL, NULL, NULL};
            int np = 0;
            bool slice = false;
            for (;;) {
                if (!is_op(peek(P), ":") && !is_op(peek(P), "]")) parts[np] = p_expr(P);
                if (accept_op(P, ":")) {
                    slice = true;
                    if (++np > 2) jfail(P->c, t->pos, US_EFORMAT, "bad slice");
                    continue;
                }
                break;
            }
            expect_op(P, "]");
            P->depth--;
            node *y = mk(P, slice ? N_SLICE : N_INDEX, t->pos);
            y->a = x;
            if (slice) {
                y->b = parts[0];
                y->c = parts[1];
                y->d = parts[2];
            } else {
                if (!parts[0]) jfail(P->c, t->pos, US_EFORMAT, "empty subscript");
                y->b = parts[0];
            }
            x = y;
        } else if (is_op(t, "(")) {
            P->i++;
            enter(P);
            node *y = mk(P, N_CALL, x->pos);
            y->a = x;
            p_args(P, y);
            P->depth--;
            x = y;
        } else
            return x;
    }
}

static node *p_unary(parser *P) {
    tok *t = peek(P);
    enter(P);
    node *x;
    if (is_op(t, "-") || is_op(t, "+")) {
        P->i++;
        x = mk(P, is_op(t, "-") ? N_NEG : N_POS, t->pos);
        x->a = p_unary(P);
    } else
        x = p_filter_test(P, p_postfix(P, p_primary(P)));
    P->depth--;
    return x;
}

static node *p_filter_test(parser *P, node *x) {
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, "|")) {
            P->i++;
            tok *nm = expect_name(P);
            /* dotted filter names are not used by chat templates */
            if (!in_list(filters, nm->s, nm->n))
                jfail(P->c, nm->pos, US_EUNSUPPORTED, "filter '%.*s' is not supported", (int)nm->n, nm->s);
            node *y = mk(P, N_FILTER, nm->pos);
            y->a = x;
            y->s = nm->s;
            y->sn = nm->n;
            if (accept_op(P, "(")) {
                enter(P);
                p_args(P, y);
                P->depth--;
            }
            x = y;
        } else if (is_name(t, "is")) {
            P->i++;
            node *y = mk(P, N_TEST, t->pos);
            y->op = accept_name(P, "not");
            tok *nm = peek(P);
            if (nm->t == T_NAME || (nm->t == T_OP && in_list(tests, nm->s, nm->n))) P->i++;
            else jfail(P->c, nm->pos, US_EFORMAT, "expected a test name after 'is'");
            if (!in_list(tests, nm->s, nm->n))
                jfail(P->c, nm->pos, US_EUNSUPPORTED, "test '%.*s' is not supported", (int)nm->n, nm->s);
            y->a = x;
            y->s = nm->s;
            y->sn = nm->n;
            if (accept_op(P, "(")) {
                enter(P);
                p_args(P, y);
                P->depth--;
            } else {
                tok *u = peek(P); /* `is divisibleby 3`, `is sameas false`: one bare argument */
                if (u->t == T_STR || u->t == T_INT || u->t == T_FLOAT ||
                    (u->t == T_NAME && !is_name(u, "and") && !is_name(u, "or") && !is_name(u, "if") &&
                     !is_name(u, "else") && !is_name(u, "is") && !is_name(u, "not") && !is_name(u, "in"))) {
                    node *arg = p_postfix(P, p_primary(P));
                    y->kids = jalloc(P->c, sizeof(node *), u->pos);
                    y->kids[0] = arg;
                    y->nk = 1;
                }
            }
            x = y;
        } else
            return x;
    }
}

static node *p_pow(parser *P) {
    node *x = p_unary(P);
    while (is_op(peek(P), "**")) {
        tok *t = peek(P);
        P->i++;
        node *y = mk(P, N_BIN, t->pos);
        y->op = '^';
        y->a = x;
        y->b = p_unary(P);
        x = y;
    }
    return x;
}

static node *p_mul(parser *P) {
    node *x = p_pow(P);
    for (;;) {
        tok *t = peek(P);
        int op = is_op(t, "*") ? '*' : is_op(t, "/") ? '/' : is_op(t, "//") ? 'F' : is_op(t, "%") ? '%' : 0;
        if (!op) return x;
        P->i++;
        node *y = mk(P, N_BIN, t->pos);
        y->op = op;
        y->a = x;
        y->b = p_pow(P);
        x = y;
    }
}

static node *p_add(parser *P) {
    node *x = p_mul(P);
    for (;;) {
        tok *t = peek(P);
        int op = is_op(t, "+") ? '+' : is_op(t, "-") ? '-' : 0;
        if (!op) return x;
        P->i++;
        node *y = mk(P, N_BIN, t->pos);
        y->op = op;
        y->a = x;
        y->b = p_mul(P);
        x = y;
    }
}

static node *p_concat(parser *P) {
    node *x = p_add(P);
    while (is_op(peek(P), "~")) {
        tok *t = peek(P);
        P->i++;
        node *y = mk(P, N_BIN, t->pos);
        y->op = '~';
        y->a = x;
        y->b = p_add(P);
        x = y;
    }
    return x;
}

enum { C_EQ = 1, C_NE, C_LT, C_LE, C_GT, C_GE, C_IN, C_NOTIN };

static node *p_compare(parser *P) {
    node *x = p_concat(P);
    node *res = NULL;
    for (;;) {
        tok *t = peek(P);
        int op = is_op(t, "==") ? C_EQ : is_op(t, "!=") ? C_NE : is_op(t, "<") ? C_LT : is_op(t, "<=") ? C_LE
               : is_op(t, ">") ? C_GT : is_op(t, ">=") ? C_GE : is_name(t, "in") ? C_IN : 0;
        if (!op && is_name(t, "not") && is_name(&P->t[P->i + 1], "in")) {
            op = C_NOTIN;
            P->i++;
        }
        if (!op) return res ? res : x;
        P->i++;
        node *y = mk(P, N_CMP, t->pos);
        y->op = op;
        y->a = x;
        y->b = p_concat(P);
        /* a < b < c is (a < b) and (b < c) */
        if (res) {
            node *and_ = mk(P, N_AND, t->pos);
            and_->a = res;
            and_->b = y;
            res = and_;
        } else
            res = y;
        x = y->b;
    }
}

static node *p_not(parser *P) {
    tok *t = peek(P);
    if (is_name(t, "not")) {
        P->i++;
        enter(P);
        node *x = mk(P, N_NOT, t->pos);
        x->a = p_not(P);
        P->depth--;
        return x;
    }
    return p_compare(P);
}

static node *p_and(parser *P) {
    node *x = p_not(P);
    while (is_name(peek(P), "and")) {
        tok *t = peek(P);
        P->i++;
        node *y = mk(P, N_AND, t->pos);
        y->a = x;
        y->b = p_not(P);
        x = y;
    }
    return x;
}

static node *p_or(parser *P) {
    node *x = p_and(P);
    while (is_name(peek(P), "or")) {
        tok *t = peek(P);
        P->i++;
        node *y = mk(P, N_OR, t->pos);
        y->a = x;
        y->b = p_and(P);
        x = y;
    }
    return x;
}

static node *p_ternary(parser *P, bool allow_cond) {
    enter(P);
    node *x = p_or(P);
    while (allow_cond && is_name(peek(P), "if")) {
        tok *t = peek(P);
        P->i++;
        node *y = mk(P, N_COND, t->pos);
        y->b = x;
        y->a = p_or(P);
        if (accept_name(P, "else")) y->c = p_ternary(P, true);
        x = y;
    }
    P->depth--;
    return x;
}

static node *p_expr(parser *P) { return p_ternary(P, true); }

/* ---- statements */

static void expect_block_end(parser *P) {
    if (peek(P)->t != T_BLOCK_END) jfail(P->c, peek(P)->pos, US_EFORMAT, "expected end of tag (%%})");
    P->i++;
}

/* Parses statements until a {% name %} with name in `ends`; returns the block and leaves the
 * parser on that name (after {%). ends == NULL: until end of template. */
static node *p_body(parser *P, const char *const *ends, size_t open_pos, const char *what);

static node *p_stmt(parser *P, size_t tagpos) {
    tok *kw = expect_name(P);
    node *x;
    if (is_name(kw, "if")) {
        x = mk(P, N_IF, tagpos);
        x->a = p_expr(P);
        expect_block_end(P);
        static const char *const e1[] = {"elif", "else", "endif", NULL};
        x->b = p_body(P, e1, tagpos, "if");
        node *cur = x;
        for (;;) {
            tok *t = expect_name(P);
            if (is_name(t, "elif")) {
                node *y = mk(P, N_IF, t->pos);
                y->a = p_expr(P);
                expect_block_end(P);
                y->b = p_body(P, e1, tagpos, "if");
                cur->c = y;
                cur = y;
            } else if (is_name(t, "else")) {
                expect_block_end(P);
                static const char *const e2[] = {"endif", NULL};
                cur->c = p_body(P, e2, tagpos, "if");
            } else {
                expect_block_end(P);
                break;
            }
        }
        return x;
    }
    if (is_name(kw, "for")) {
        x = mk(P, N_FOR, tagpos);
        kidv k = {0};
        do {
            tok *nm = expect_name(P);
            node *v = mk(P, N_NAME, nm->pos);
            v->s = nm->s;
            v->sn = nm->n;
            kid_push(P, &k, v);
        } while (accept_op(P, ","));
        x->kids = k.v;
        x->nk = k.n;
        if (!accept_name(P, "in")) jfail(P->c, peek(P)->pos, US_EFORMAT, "expected 'in' in for");
        x->a = p_ternary(P, false);
        if (accept_name(P, "if")) x->d = p_expr(P);
        if (accept_name(P, "recursive")) jfail(P->c, tagpos, US_EUNSUPPORTED, "recursive loops are not supported");
        expect_block_end(P);
        static const char *const e1[] = {"else", "endfor", NULL};
        x->b = p_body(P, e1, tagpos, "for");
        if (is_name(expect_name(P), "else")) {
            expect_block_end(P);
            static const char *const e2[] = {"endfor", NULL};
            x->c = p_body(P, e2, tagpos, "for");
            expect_name(P);
        }
        expect_block_end(P);
        return x;
    }
    if (is_name(kw, "set")) {
        tok *nm = expect_name(P);
        x = mk(P, N_SET, tagpos);
        x->s = nm->s;
        x->sn = nm->n;
        if (accept_op(P, ".")) {
            tok *at = expect_name(P);
            x->s2 = at->s;
            x->s2n = at->n;
        }
        if (is_op(peek(P), ",")) jfail(P->c, peek(P)->pos, US_EUNSUPPORTED, "tuple assignment in set is not supported");
        if (peek(P)->t == T_BLOCK_END && !x->s2) {
            P->i++;
            x->k = N_SETBLOCK;
            static const char *const e1[] = {"endset", NULL};
            x->b = p_body(P, e1, tagpos, "set");
            expect_name(P);
            expect_block_end(P);
            return x;
        }
        expect_op(P, "=");
        x->a = p_expr(P);
        expect_block_end(P);
        return x;
    }
    if (is_name(kw, "break") || is_name(kw, "continue")) {
        x = mk(P, is_name(kw, "break") ? N_BREAK : N_CONTINUE, tagpos);
        expect_block_end(P);
        return x;
    }
    if (is_name(kw, "generation")) { /* transformers' assistant-mask marker: renders its body */
        expect_block_end(P);
        static const char *const e1[] = {"endgeneration", NULL};
        x = p_body(P, e1, tagpos, "generation");
        expect_name(P);
        expect_block_end(P);
        return x;
    }
    jfail(P->c, kw->pos, US_EUNSUPPORTED, "statement '%.*s' is not supported", (int)kw->n, kw->s);
}

static node *p_body(parser *P, const char *const *ends, size_t open_pos, const char *what) {
    enter(P);
    kidv k = {0};
    node *blk = mk(P, N_BLOCK, peek(P)->pos);
    for (;;) {
        tok *t = peek(P);
        if (t->t == T_EOF) {
            if (ends) jfail(P->c, open_pos, US_EFORMAT, "unclosed {%% %s %%} (template ends first)", what);
            break;
        }
        if (t->t == T_TEXT) {
            node *x = mk(P, N_TEXT, t->pos);
            x->s = t->s;
            x->sn = t->n;
            kid_push(P, &k, x);
            P->i++;
        } else if (t->t == T_VAR_BEGIN) {
            P->i++;
            node *x = mk(P, N_OUT, t->pos);
            x->a = p_expr(P);
            if (peek(P)->t != T_VAR_END) jfail(P->c, peek(P)->pos, US_EFORMAT, "expected end of expression (}})");
            P->i++;
            kid_push(P, &k, x);
        } else if (t->t == T_BLOCK_BEGIN) {
            tok *nm = &P->t[P->i + 1];
            if (nm->t == T_NAME && ends && in_list(ends, nm->s, nm->n)) {
                P->i++;
                break;
            }
            if (nm->t == T_NAME && (in_list((const char *const[]){"endif", "endfor", "elif", "else", "endset",
                                                                   "endgeneration", "endmacro", NULL},
                                            nm->s, nm->n)))
                jfail(P->c, nm->pos, US_EFORMAT, "unexpected {%% %.*s %%}", (int)nm->n, nm->s);
            P->i++;
            kid_push(P, &k, p_stmt(P, t->pos));
        } else
            jfail(P->c, t->pos, US_EFORMAT, "unexpected token");
    }
    blk->kids = k.v;
    blk->nk = k.n;
    P->depth--;
    return blk;
}

/* ---------------------------------------------------------------- compile */

struct us_jinja {
    arena ar;
    char *src, *name;
    node *root;
};

void us_jinja_free(us_jinja *t) {
    if (!t) return;
    arena_free(&t->ar);
    free(t->src);
    free(t->name);
    free(t);
}

us_status us_jinja_compile(const char *src, const char *name, us_jinja **out, us_err *e) {
    *out = NULL;
    us_jinja *t = calloc(1, sizeof *t);
    if (!t) return us_fail(e, US_ENOMEM, "out of memory");
    t->src = strdup(src ? src : "");
    t->name = strdup(name ? name : "template");
    if (!t->src || !t->name) {
        us_jinja_free(t);
        return us_fail(e, US_ENOMEM, "out of memory");
    }
    jctx c = {.src = t->src, .name = t->name, .ar = &t->ar, .e = e};
    if (setjmp(c.jb)) {
        us_jinja_free(t);
        return c.st;
    }
    lexer L = {.c = &c};
    lex(&L);
    parser P = {.c = &c, .t = L.v};
    t->root = p_body(&P, NULL, 0, "");
    *out = t;
    return US_OK;
}

/* ---------------------------------------------------------------- evaluation */

typedef struct var {
    const char *name;
    size_t n;
    jv v;
} var;

typedef struct scope {
    var *v;
    size_t n, cap;
} scope;

typedef struct rt {
    jctx c;
    scope sc[J_MAX_DEPTH + 8];
    int nsc;
    int depth;
    long iters;
    us_tbuf *out;
    int brk; /* 1 break, 2 continue */
    arena ar;
    us_tbuf ob;      /* the output */
    us_tbuf tmp[64]; /* temporary strings being built; the error path frees them */
    bool tmp_used[64];
} rt;

#define UNDEF ((jv){.t = V_UNDEF})
#define NONE ((jv){.t = V_NONE})
static jv jb_(bool b) { return (jv){.t = V_BOOL, .b = b}; }
static jv ji_(int64_t i) { return (jv){.t = V_INT, .i = i}; }
static jv jf_(double f) { return (jv){.t = V_FLOAT, .f = f}; }
static jv js_(const char *p, size_t n) { return (jv){.t = V_STR, .s = {p, n}}; }
static jv jcs(const char *p) { return js_(p, strlen(p)); }

static const char *type_name(const jv *v) {
    static const char *const n[] = {"undefined", "none", "bool", "int", "float", "string", "list", "dict", "namespace"};
    return n[v->t];
}

static void set_var(rt *R, int level, const char *name, size_t n, jv v, size_t pos) {
    scope *s = &R->sc[level];
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].n == n && !memcmp(s->v[i].name, name, n)) {
            s->v[i].v = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        var *nv = jalloc(&R->c, cap * sizeof *nv, pos);
        if (s->n) memcpy(nv, s->v, s->n * sizeof *nv);
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = (var){name, n, v};
}

static bool get_var(rt *R, const char *name, size_t n, jv *out) {
    for (int l = R->nsc - 1; l >= 0; l--) {
        scope *s = &R->sc[l];
        for (size_t i = s->n; i-- > 0;)
            if (s->v[i].n == n && !memcmp(s->v[i].name, name, n)) {
                *out = s->v[i].v;
                return true;
            }
    }
    return false;
}

static jlist *new_list(rt *R, size_t n, size_t pos) {
    jlist *l = jalloc(&R->c, sizeof *l, pos);
    l->n = n;
    l->v = n ? jalloc(&R->c, n * sizeof(jv), pos) : NULL;
    return l;
}

static jdict *new_dict(rt *R, size_t cap, size_t pos) {
    jdict *d = jalloc(&R->c, sizeof *d, pos);
    d->n = 0;
    d->cap = cap ? cap : 4;
    d->k = jalloc(&R->c, d->cap * sizeof(jv), pos);
    d->v = jalloc(&R->c, d->cap * sizeof(jv), pos);
    return d;
}


static bool jv_eq(const jv *a, const jv *b);

static jv *dict_find(const jdict *d, const jv *k) {
    for (size_t i = 0; i < d->n; i++)
        if (jv_eq(&d->k[i], k)) return &d->v[i];
    return NULL;
}

static void dict_set(rt *R, jdict *d, jv k, jv v, size_t pos) {
    jv *p = dict_find(d, &k);
    if (p) {
        *p = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        jv *nk = jalloc(&R->c, cap * sizeof(jv), pos), *nv = jalloc(&R->c, cap * sizeof(jv), pos);
        memcpy(nk, d->k, d->n * sizeof(jv));
        memcpy(nv, d->v, d->n * sizeof(jv));
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static bool is_num(const jv *v) { return v->t == V_BOOL || v->t == V_INT || v->t == V_FLOAT; }
static double num_f(const jv *v) { return v->t == V_FLOAT ? v->f : v->t == V_INT ? (double)v->i : (double)v->b; }
static int64_t num_i(const jv *v) { return v->t == V_INT ? v->i : (int64_t)v->b; }

static bool jv_eq(const jv *a, const jv *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return num_i(a) == num_i(b);
        return num_f(a) == num_f(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return true;
    case V_STR: return a->s.n == b->s.n && !memcmp(a->s.p, b->s.p, a->s.n);
    case V_LIST:
        if (a->l->n != b->l->n) return false;
        for (size_t i = 0; i < a->l->n; i++)
            if (!jv_eq(&a->l->v[i], &b->l->v[i])) return false;
        return true;
    case V_DICT:
        if (a->d->n != b->d->n) return false;
        for (size_t i = 0; i < a->d->n; i++) {
            jv *o = dict_find(b->d, &a->d->k[i]);
            if (!o || !jv_eq(&a->d->v[i], o)) return false;
        }
        return true;
    case V_NS: return a->d == b->d;
    default: return false;
    }
}

static bool truthy(const jv *v) {
    switch (v->t) {
    case V_UNDEF: case V_NONE: return false;
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->s.n > 0;
    case V_LIST: return v->l->n > 0;
    case V_DICT: return v->d->n > 0;
    default: return true;
    }
}

/* ---- strings */

/* Python's str.isspace() code points. */
static bool py_space(uint32_t c) { return us_is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

static size_t cp_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Byte offset of code point index ci (ci <= count). */
static size_t cp_off(const char *s, size_t n, size_t ci) {
    size_t i = 0;
    while (i < n && ci) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        ci--;
    }
    return i;
}

static uint32_t dec(const char *s, size_t n, size_t *i) {
    uint32_t cp;
    size_t k = us_utf8_decode((const unsigned char *)s + *i, n - *i, &cp);
    if (!k) {
        cp = (unsigned char)s[*i];
        k = 1;
    }
    *i += k;
    return cp;
}

static bool in_chars(uint32_t cp, const jv *chars) {
    if (!chars) return py_space(cp);
    size_t i = 0;
    while (i < chars->s.n)
        if (dec(chars->s.p, chars->s.n, &i) == cp) return true;
    return false;
}

static jv py_strip(jv s, const jv *chars, bool left, bool right) {
    size_t a = 0, b = s.s.n;
    const char *p = s.s.p;
    while (left && a < b) {
        size_t k = a;
        if (!in_chars(dec(p, b, &k), chars)) break;
        a = k;
    }
    while (right && b > a) {
        size_t st = b - 1;
        while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
        size_t k = st;
        if (!in_chars(dec(p, b, &k), chars)) break;
        b = st;
    }
    return js_(p + a, b - a);
}

static void tb_add(rt *R, us_tbuf *b, const char *s, size_t n, size_t pos) {
    if (b->n + n > J_MAX_OUT) jfail(&R->c, pos, US_EINVAL, "output larger than %zu MiB", J_MAX_OUT >> 20);
    if (!us_tbuf_add(b, s, n)) jfail(&R->c, pos, US_ENOMEM, "out of memory");
}

/* A temporary buffer (R_tmp) moved into the arena and released. */
static jv tb_done(rt *R, us_tbuf *b, size_t pos) {
    char *p = jstrdup(&R->c, b->p ? b->p : "", b->n, pos);
    jv v = js_(p, b->n);
    us_tbuf_free(b);
    if (b >= R->tmp && b < R->tmp + 64) R->tmp_used[b - R->tmp] = false;
    return v;
}

static void fmt_float(double f, char *buf, size_t cap) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f > 0 ? "inf" : "-inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, f);
        if (strtod(buf, NULL) == f) break;
    }
    /* Python repr: exponent form only outside 1e-4 <= |f| < 1e16; always a '.' or 'e' */
    double a = fabs(f);
    if (a != 0 && (a < 1e-4 || a >= 1e16)) {
        return; /* %g spells the exponent as Python does: 1e-05, 1e+16 */
    }
    if (strchr(buf, 'e')) snprintf(buf, cap, "%.17g", f); /* unusual; keep a readable form */
    if (!strchr(buf, '.') && !strchr(buf, 'e') && !strchr(buf, 'n') && !strchr(buf, 'i')) strncat(buf, ".0", cap - strlen(buf) - 1);
}

static void repr(rt *R, us_tbuf *b, const jv *v, size_t pos, int depth);

/* str(v) appended to b, as Python/Jinja print it. */
static void to_str(rt *R, us_tbuf *b, const jv *v, size_t pos, int depth) {
    char buf[64];
    switch (v->t) {
    case V_UNDEF: return;
    case V_NONE: tb_add(R, b, "None", 4, pos); return;
    case V_BOOL: tb_add(R, b, v->b ? "True" : "False", v->b ? 4 : 5, pos); return;
    case V_INT: snprintf(buf, sizeof buf, "%lld", (long long)v->i); tb_add(R, b, buf, strlen(buf), pos); return;
    case V_FLOAT: fmt_float(v->f, buf, sizeof buf); tb_add(R, b, buf, strlen(buf), pos); return;
    case V_STR: tb_add(R, b, v->s.p, v->s.n, pos); return;
    default: repr(R, b, v, pos, depth);
    }
}

static void repr(rt *R, us_tbuf *b, const jv *v, size_t pos, int depth) {
    if (depth > J_MAX_DEPTH) jfail(&R->c, pos, US_EINVAL, "value nested too deeply to print");
    if (v->t == V_STR) {
        bool sq = memchr(v->s.p, '\'', v->s.n) && !memchr(v->s.p, '"', v->s.n);
        char q = sq ? '"' : '\'';
        tb_add(R, b, &q, 1, pos);
        for (size_t i = 0; i < v->s.n; i++) {
            unsigned char ch = (unsigned char)v->s.p[i];
            char e[8];
            if (ch == (unsigned char)q || ch == '\\') e[0] = '\\', e[1] = (char)ch, e[2] = 0;
            else if (ch == '\n') strcpy(e, "\\n");
            else if (ch == '\r') strcpy(e, "\\r");
            else if (ch == '\t') strcpy(e, "\\t");
            else if (ch < 0x20 || ch == 0x7f) snprintf(e, sizeof e, "\\x%02x", ch);
            else e[0] = (char)ch, e[1] = 0;
            tb_add(R, b, e, strlen(e), pos);
        }
        tb_add(R, b, &q, 1, pos);
    } else if (v->t == V_LIST) {
        tb_add(R, b, "[", 1, pos);
        for (size_t i = 0; i < v->l->n; i++) {
            if (i) tb_add(R, b, ", ", 2, pos);
            repr(R, b, &v->l->v[i], pos, depth + 1);
        }
        tb_add(R, b, "]", 1, pos);
    } else if (v->t == V_DICT) {
        tb_add(R, b, "{", 1, pos);
        for (size_t i = 0; i < v->d->n; i++) {
            if (i) tb_add(R, b, ", ", 2, pos);
            repr(R, b, &v->d->k[i], pos, depth + 1);
            tb_add(R, b, ": ", 2, pos);
            repr(R, b, &v->d->v[i], pos, depth + 1);
        }
        tb_add(R, b, "}", 1, pos);
    } else if (v->t == V_NS) {
        tb_add(R, b, "<Namespace>", 11, pos);
    } else
        to_str(R, b, v, pos, depth);
}

/* json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson. */
static void tojson(rt *R, us_tbuf *b, const jv *v, int indent, int level, size_t pos) {
    if (level > J_MAX_DEPTH) jfail(&R->c, pos, US_EINVAL, "value nested too deeply for tojson");
    char buf[64];
    switch (v->t) {
    case V_UNDEF: jfail(&R->c, pos, US_EINVAL, "tojson: value is undefined");
    case V_NS: jfail(&R->c, pos, US_EINVAL, "tojson: a namespace is not JSON serializable");
    case V_NONE: tb_add(R, b, "null", 4, pos); return;
    case V_BOOL: tb_add(R, b, v->b ? "true" : "false", v->b ? 4 : 5, pos); return;
    case V_INT: case V_FLOAT:
        if (v->t == V_FLOAT && isnan(v->f)) tb_add(R, b, "NaN", 3, pos);
        else if (v->t == V_FLOAT && isinf(v->f)) tb_add(R, b, v->f > 0 ? "Infinity" : "-Infinity", v->f > 0 ? 8 : 9, pos);
        else to_str(R, b, v, pos, 0);
        (void)buf;
        return;
    case V_STR:
        tb_add(R, b, "\"", 1, pos);
        for (size_t i = 0; i < v->s.n; i++) {
            unsigned char ch = (unsigned char)v->s.p[i];
            char e[8];
            switch (ch) {
            case '"': strcpy(e, "\\\""); break;
            case '\\': strcpy(e, "\\\\"); break;
            case '\n': strcpy(e, "\\n"); break;
            case '\r': strcpy(e, "\\r"); break;
            case '\t': strcpy(e, "\\t"); break;
            case '\b': strcpy(e, "\\b"); break;
            case '\f': strcpy(e, "\\f"); break;
            default:
                if (ch < 0x20) snprintf(e, sizeof e, "\\u%04x", ch);
                else e[0] = (char)ch, e[1] = 0;
            }
            tb_add(R, b, e, strlen(e), pos);
        }
        tb_add(R, b, "\"", 1, pos);
        return;
    case V_LIST: case V_DICT: {
        bool isl = v->t == V_LIST;
        size_t n = isl ? v->l->n : v->d->n;
        tb_add(R, b, isl ? "[" : "{", 1, pos);
        if (!n) {
            tb_add(R, b, isl ? "]" : "}", 1, pos);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (i) tb_add(R, b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2, pos);
            if (indent >= 0) {
                tb_add(R, b, "\n", 1, pos);
                for (int k = 0; k < indent * (level + 1); k++) tb_add(R, b, " ", 1, pos);
            }
            if (isl) tojson(R, b, &v->l->v[i], indent, level + 1, pos);
            else {
                const jv *k = &v->d->k[i];
                if (k->t == V_STR) tojson(R, b, k, indent, level + 1, pos);
                else { /* Python turns non-string keys into strings */
                    tb_add(R, b, "\"", 1, pos);
                    if (k->t == V_NONE) tb_add(R, b, "null", 4, pos);
                    else if (k->t == V_BOOL) tb_add(R, b, k->b ? "true" : "false", k->b ? 4 : 5, pos);
                    else to_str(R, b, k, pos, 0);
                    tb_add(R, b, "\"", 1, pos);
                }
                tb_add(R, b, ": ", 2, pos);
                tojson(R, b, &v->d->v[i], indent, level + 1, pos);
            }
        }
        if (indent >= 0) {
            tb_add(R, b, "\n", 1, pos);
            for (int k = 0; k < indent * level; k++) tb_add(R, b, " ", 1, pos);
        }
        tb_add(R, b, isl ? "]" : "}", 1, pos);
        return;
    }
    }
}

/* Values built in temporary buffers: a buffer that lives in the rt so the error path frees it. */
static us_tbuf *R_tmp(rt *R);
static jv str_of(rt *R, const jv *v, size_t pos) {
    if (v->t == V_STR) return *v;
    us_tbuf *b = R_tmp(R);
    to_str(R, b, v, pos, 0);
    return tb_done(R, b, pos);
}

/* ---- evaluator */

typedef struct args {
    jv pos[8];
    int np;
    const char *kn[8];
    size_t kl[8];
    jv kv[8];
    int nk;
} args;

static jv eval(rt *R, const node *x);
static void exec(rt *R, const node *x);

static void eval_args(rt *R, const node *call, args *A) {
    A->np = A->nk = 0;
    for (size_t i = 0; i < call->nk; i++) {
        const node *k = call->kids[i];
        if (k->k == N_KWARG) {
            if (A->nk == 8) jfail(&R->c, k->pos, US_EUNSUPPORTED, "too many keyword arguments");
            A->kn[A->nk] = k->s;
            A->kl[A->nk] = k->sn;
            A->kv[A->nk++] = eval(R, k->a);
        } else {
            if (A->np == 8) jfail(&R->c, k->pos, US_EUNSUPPORTED, "too many arguments");
            A->pos[A->np++] = eval(R, k);
        }
    }
}

/* Argument i, or keyword name, or NULL. */
static const jv *arg(const args *A, int i, const char *name) {
    if (i >= 0 && i < A->np) return &A->pos[i];
    for (int k = 0; k < A->nk; k++)
        if (name && A->kl[k] == strlen(name) && !memcmp(A->kn[k], name, A->kl[k])) return &A->kv[k];
    return NULL;
}

static jv need_str(rt *R, const jv *v, size_t pos, const char *what) {
    if (!v || v->t != V_STR)
        jfail(&R->c, pos, US_EINVAL, "%s: expected a string, got %s", what, v ? type_name(v) : "nothing");
    return *v;
}

static jv getattr_(rt *R, jv o, const char *name, size_t n, size_t pos) {
    if (o.t == V_DICT || o.t == V_NS) {
        jv k = js_(name, n);
        jv *p = dict_find(o.d, &k);
        return p ? *p : UNDEF;
    }
    if (o.t == V_UNDEF) jfail(&R->c, pos, US_EINVAL, "'%.*s' of an undefined value", (int)n, name);
    if (o.t == V_NONE) jfail(&R->c, pos, US_EINVAL, "None has no attribute '%.*s'", (int)n, name);
    return UNDEF;
}

static int64_t py_index(int64_t i, size_t n) { return i < 0 ? i + (int64_t)n : i; }

static jv getitem(rt *R, jv o, jv k, size_t pos) {
    if (o.t == V_DICT || o.t == V_NS) {
        jv *p = dict_find(o.d, &k);
        return p ? *p : UNDEF;
    }
    if (o.t == V_UNDEF) jfail(&R->c, pos, US_EINVAL, "subscript of an undefined value");
    if (o.t == V_NONE) jfail(&R->c, pos, US_EINVAL, "None is not subscriptable");
    if ((o.t == V_LIST || o.t == V_STR) && (k.t == V_INT || k.t == V_BOOL)) {
        size_t n = o.t == V_LIST ? o.l->n : cp_len(o.s.p, o.s.n);
        int64_t i = py_index(num_i(&k), n);
        if (i < 0 || i >= (int64_t)n) return UNDEF;
        if (o.t == V_LIST) return o.l->v[i];
        size_t a = cp_off(o.s.p, o.s.n, (size_t)i), b = cp_off(o.s.p, o.s.n, (size_t)i + 1);
        return js_(o.s.p + a, b - a);
    }
    if (k.t == V_STR) return getattr_(R, o, k.s.p, k.s.n, pos);
    return UNDEF;
}

static jv slice(rt *R, jv o, const jv *a, const jv *b, const jv *c, size_t pos) {
    int64_t step = 1;
    if (c && c->t != V_NONE) {
        if (c->t != V_INT) jfail(&R->c, pos, US_EINVAL, "slice step must be an integer");
        step = c->i;
        if (!step) jfail(&R->c, pos, US_EINVAL, "slice step cannot be zero");
    }
    if (o.t != V_LIST && o.t != V_STR) jfail(&R->c, pos, US_EINVAL, "cannot slice %s", type_name(&o));
    int64_t n = o.t == V_LIST ? (int64_t)o.l->n : (int64_t)cp_len(o.s.p, o.s.n);
    int64_t lo, hi;
    for (int w = 0; w < 2; w++) {
        const jv *v = w ? b : a;
        int64_t *dst = w ? &hi : &lo;
        if (!v || v->t == V_NONE) *dst = step > 0 ? (w ? n : 0) : (w ? -1 : n - 1);
        else {
            if (v->t != V_INT) jfail(&R->c, pos, US_EINVAL, "slice indices must be integers");
            int64_t i = v->i < -n - 1 ? -n - 1 : v->i > n ? n : v->i;
            if (i < 0) i += n;
            if (step > 0) *dst = i < 0 ? 0 : i > n ? n : i;
            else *dst = i < -1 ? -1 : i > n - 1 ? n - 1 : i;
        }
    }
    int64_t cnt = 0;
    if (step > 0 && hi > lo) cnt = (hi - lo + step - 1) / step;
    if (step < 0 && lo > hi) cnt = (lo - hi + (-step) - 1) / (-step);
    if (o.t == V_LIST) {
        jlist *l = new_list(R, (size_t)cnt, pos);
        for (int64_t k = 0; k < cnt; k++) l->v[k] = o.l->v[lo + k * step];
        return (jv){.t = V_LIST, .l = l};
    }
    /* strings: code point offsets */
    size_t *off = jalloc(&R->c, ((size_t)n + 1) * sizeof *off, pos);
    size_t i = 0;
    for (int64_t k = 0; k <= n; k++) {
        off[k] = i;
        if (k < n) dec(o.s.p, o.s.n, &i);
    }
    if (step == 1) return js_(o.s.p + off[lo], cnt ? off[lo + cnt] - off[lo] : 0);
    us_tbuf *tb = R_tmp(R);
    for (int64_t k = 0; k < cnt; k++) {
        int64_t j = lo + k * step;
        tb_add(R, tb, o.s.p + off[j], off[j + 1] - off[j], pos);
    }
    return tb_done(R, tb, pos);
}

static int64_t to_int_checked(rt *R, double f, size_t pos) {
    if (!(f > -9.2e18 && f < 9.2e18)) jfail(&R->c, pos, US_EINVAL, "number out of integer range");
    return (int64_t)f;
}

static jv binop(rt *R, int op, jv a, jv b, size_t pos) {
    if (op == '~') {
        us_tbuf *tb = R_tmp(R);
        to_str(R, tb, &a, pos, 0);
        to_str(R, tb, &b, pos, 0);
        return tb_done(R, tb, pos);
    }
    if (a.t == V_UNDEF || b.t == V_UNDEF) jfail(&R->c, pos, US_EINVAL, "arithmetic on an undefined value");
    if (op == '+' && a.t == V_STR && b.t == V_STR) {
        us_tbuf *tb = R_tmp(R);
        tb_add(R, tb, a.s.p, a.s.n, pos);
        tb_add(R, tb, b.s.p, b.s.n, pos);
        return tb_done(R, tb, pos);
    }
    if (op == '+' && a.t == V_LIST && b.t == V_LIST) {
        jlist *l = new_list(R, a.l->n + b.l->n, pos);
        if (a.l->n) memcpy(l->v, a.l->v, a.l->n * sizeof(jv));
        if (b.l->n) memcpy(l->v + a.l->n, b.l->v, b.l->n * sizeof(jv));
        return (jv){.t = V_LIST, .l = l};
    }
    if (op == '*' && ((a.t == V_STR && (b.t == V_INT || b.t == V_BOOL)) || (b.t == V_STR && (a.t == V_INT || a.t == V_BOOL)))) {
        jv s = a.t == V_STR ? a : b;
        int64_t k = a.t == V_STR ? num_i(&b) : num_i(&a);
        if (k > 0 && s.s.n && (uint64_t)k > J_MAX_OUT / s.s.n) jfail(&R->c, pos, US_EINVAL, "string repetition too large");
        us_tbuf *tb = R_tmp(R);
        for (int64_t i = 0; i < k; i++) tb_add(R, tb, s.s.p, s.s.n, pos);
        return tb_done(R, tb, pos);
    }
    if (!is_num(&a) || !is_num(&b))
        jfail(&R->c, pos, US_EINVAL, "unsupported operand types for '%c': %s and %s", op == 'F' ? '/' : op == '^' ? '*' : op,
              type_name(&a), type_name(&b));
    bool fl = a.t == V_FLOAT || b.t == V_FLOAT;
    if (op == '/') {
        if (num_f(&b) == 0) jfail(&R->c, pos, US_EINVAL, "division by zero");
        return jf_(num_f(&a) / num_f(&b));
    }
    if (op == '^') {
        if (!fl && num_i(&b) >= 0) {
            int64_t r = 1, base = num_i(&a);
            for (int64_t i = 0; i < num_i(&b); i++)
                if (__builtin_mul_overflow(r, base, &r)) jfail(&R->c, pos, US_EINVAL, "integer overflow");
            return ji_(r);
        }
        return jf_(pow(num_f(&a), num_f(&b)));
    }
    if (fl) {
        double x = num_f(&a), y = num_f(&b);
        switch (op) {
        case '+': return jf_(x + y);
        case '-': return jf_(x - y);
        case '*': return jf_(x * y);
        case 'F': case '%': {
            if (y == 0) jfail(&R->c, pos, US_EINVAL, "division by zero");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return op == '%' ? jf_(m) : jf_(floor((x - m) / y + 0.5) == (x - m) / y ? (x - m) / y : floor(x / y));
        }
        }
    }
    int64_t x = num_i(&a), y = num_i(&b), r;
    bool ovf = false;
    switch (op) {
    case '+': ovf = __builtin_add_overflow(x, y, &r); break;
    case '-': ovf = __builtin_sub_overflow(x, y, &r); break;
    case '*': ovf = __builtin_mul_overflow(x, y, &r); break;
    default: /* 'F', '%' */
        if (!y) jfail(&R->c, pos, US_EINVAL, "division by zero");
        if (x == INT64_MIN && y == -1) ovf = true, r = 0;
        else {
            int64_t q = x / y, m = x % y;
            if (m && ((m < 0) != (y < 0))) q--, m += y;
            r = op == '%' ? m : q;
        }
    }
    if (ovf) jfail(&R->c, pos, US_EINVAL, "integer overflow");
    return ji_(r);
}

static bool contains(rt *R, jv hay, jv needle, size_t pos) {
    if (hay.t == V_STR) {
        if (needle.t != V_STR) jfail(&R->c, pos, US_EINVAL, "'in <string>' requires a string on the left");
        if (!needle.s.n) return true;
        return memmem(hay.s.p, hay.s.n, needle.s.p, needle.s.n) != NULL;
    }
    if (hay.t == V_LIST) {
        for (size_t i = 0; i < hay.l->n; i++)
            if (jv_eq(&hay.l->v[i], &needle)) return true;
        return false;
    }
    if (hay.t == V_DICT || hay.t == V_NS) return dict_find(hay.d, &needle) != NULL;
    if (hay.t == V_UNDEF) return false;
    jfail(&R->c, pos, US_EINVAL, "'in' needs a string, list or dict, got %s", type_name(&hay));
}

static int cmp_order(rt *R, jv a, jv b, size_t pos) {
    if (is_num(&a) && is_num(&b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return num_i(&a) < num_i(&b) ? -1 : num_i(&a) > num_i(&b);
        return num_f(&a) < num_f(&b) ? -1 : num_f(&a) > num_f(&b);
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.s.n < b.s.n ? a.s.n : b.s.n;
        int c = memcmp(a.s.p, b.s.p, m);
        return c ? (c < 0 ? -1 : 1) : a.s.n < b.s.n ? -1 : a.s.n > b.s.n;
    }
    jfail(&R->c, pos, US_EINVAL, "cannot order %s and %s", type_name(&a), type_name(&b));
}

/* Lists to iterate: list as is, dict keys, string code points, undefined empty. */
static jlist *iter_list(rt *R, jv v, size_t pos) {
    if (v.t == V_LIST) return v.l;
    if (v.t == V_DICT) {
        jlist *l = new_list(R, v.d->n, pos);
        if (v.d->n) memcpy(l->v, v.d->k, v.d->n * sizeof(jv));
        return l;
    }
    if (v.t == V_STR) {
        size_t n = cp_len(v.s.p, v.s.n), i = 0;
        jlist *l = new_list(R, n, pos);
        for (size_t k = 0; k < n; k++) {
            size_t a = i;
            dec(v.s.p, v.s.n, &i);
            l->v[k] = js_(v.s.p + a, i - a);
        }
        return l;
    }
    if (v.t == V_UNDEF) return new_list(R, 0, pos);
    jfail(&R->c, pos, US_EINVAL, "%s is not iterable", type_name(&v));
}

static void count_iter(rt *R, size_t pos) {
    if (++R->iters > J_MAX_ITERS) jfail(&R->c, pos, US_EINVAL, "more than %ld loop iterations", J_MAX_ITERS);
}

static bool run_test(rt *R, const char *name, size_t n, jv v, const args *A, size_t pos);

static jv call_filter(rt *R, const char *name, size_t n, jv v, const args *A, size_t pos);

static jv ascii_case(rt *R, jv s, int mode, size_t pos) { /* 0 lower, 1 upper, 2 capitalize, 3 title */
    char *p = jstrdup(&R->c, s.s.p, s.s.n, pos);
    bool start = true;
    for (size_t i = 0; i < s.s.n; i++) {
        char ch = p[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool up = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && start);
        if (alpha) p[i] = up ? (char)(ch & ~0x20) : (char)(ch | 0x20);
        if (mode == 3) start = !alpha && !is_digit(ch) && !((unsigned char)ch & 0x80);
    }
    return js_(p, s.s.n);
}

static jv str_replace(rt *R, jv s, jv old, jv nw, int64_t count, size_t pos) {
    us_tbuf *tb = R_tmp(R);
    size_t i = 0;
    int64_t done = 0;
    if (!old.s.n) {
        while (count < 0 || done < count) {
            tb_add(R, tb, nw.s.p, nw.s.n, pos);
            done++;
            if (i >= s.s.n) break;
            size_t a = i;
            dec(s.s.p, s.s.n, &i);
            tb_add(R, tb, s.s.p + a, i - a, pos);
        }
        tb_add(R, tb, s.s.p + i, s.s.n - i, pos);
        return tb_done(R, tb, pos);
    }
    while (i <= s.s.n) {
        const char *f = (count < 0 || done < count) ? memmem(s.s.p + i, s.s.n - i, old.s.p, old.s.n) : NULL;
        if (!f) {
            tb_add(R, tb, s.s.p + i, s.s.n - i, pos);
            break;
        }
        tb_add(R, tb, s.s.p + i, (size_t)(f - (s.s.p + i)), pos);
        tb_add(R, tb, nw.s.p, nw.s.n, pos);
        i = (size_t)(f - s.s.p) + old.s.n;
        done++;
    }
    return tb_done(R, tb, pos);
}

static jv str_split(rt *R, jv s, const jv *sep, int64_t maxsplit, size_t pos) {
    jv items[64];
    size_t ni = 0, cap = 64;
    jv *v = items;
    jv part;
#define PUSH(x)                                                                        \
    do {                                                                               \
        if (ni == cap) {                                                               \
            jv *nv = jalloc(&R->c, cap * 2 * sizeof(jv), pos);                         \
            memcpy(nv, v, ni * sizeof(jv));                                            \
            v = nv;                                                                    \
            cap *= 2;                                                                  \
        }                                                                              \
        v[ni++] = (x);                                                                 \
    } while (0)
    if (!sep || sep->t == V_NONE) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            while (i < s.s.n) { /* skip whitespace */
                size_t k = i;
                if (!py_space(dec(s.s.p, s.s.n, &k))) break;
                i = k;
            }
            if (i >= s.s.n) break;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = s.s.n; /* rest, right-stripped of nothing (Python keeps trailing ws) */
                part = js_(s.s.p + i, e - i);
                part = py_strip(part, NULL, false, true);
                PUSH(part);
                break;
            }
            size_t a = i;
            while (i < s.s.n) {
                size_t k = i;
                if (py_space(dec(s.s.p, s.s.n, &k))) break;
                i = k;
            }
            PUSH(js_(s.s.p + a, i - a));
            done++;
        }
    } else {
        if (sep->t != V_STR) jfail(&R->c, pos, US_EINVAL, "split: separator must be a string");
        if (!sep->s.n) jfail(&R->c, pos, US_EINVAL, "split: empty separator");
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *f = (maxsplit < 0 || done < maxsplit) ? memmem(s.s.p + i, s.s.n - i, sep->s.p, sep->s.n) : NULL;
            if (!f) {
                PUSH(js_(s.s.p + i, s.s.n - i));
                break;
            }
            PUSH(js_(s.s.p + i, (size_t)(f - s.s.p) - i));
            i = (size_t)(f - s.s.p) + sep->s.n;
            done++;
        }
    }
#undef PUSH
    jlist *l = new_list(R, ni, pos);
    if (ni) memcpy(l->v, v, ni * sizeof(jv));
    return (jv){.t = V_LIST, .l = l};
}

static bool prefix_match(jv s, jv p, bool end) {
    if (p.t != V_STR || p.s.n > s.s.n) return false;
    return !memcmp(end ? s.s.p + s.s.n - p.s.n : s.s.p, p.s.p, p.s.n);
}

static jv call_method(rt *R, jv o, const char *m, size_t mn, const args *A, size_t pos) {
#define M(s) (mn == sizeof(s) - 1 && !memcmp(m, s, mn))
    if (o.t == V_STR) {
        if (M("strip") || M("lstrip") || M("rstrip")) {
            const jv *ch = arg(A, 0, "chars");
            if (ch && ch->t == V_NONE) ch = NULL;
            if (ch) need_str(R, ch, pos, "strip");
            return py_strip(o, ch, !M("rstrip"), !M("lstrip"));
        }
        if (M("startswith") || M("endswith")) {
            const jv *p = arg(A, 0, "prefix");
            if (!p) jfail(&R->c, pos, US_EINVAL, "%.*s needs an argument", (int)mn, m);
            if (p->t == V_LIST) {
                for (size_t i = 0; i < p->l->n; i++)
                    if (prefix_match(o, p->l->v[i], M("endswith"))) return jb_(true);
                return jb_(false);
            }
            need_str(R, p, pos, "startswith/endswith");
            return jb_(prefix_match(o, *p, M("endswith")));
        }
        if (M("split")) {
            const jv *mx = arg(A, 1, "maxsplit");
            return str_split(R, o, arg(A, 0, "sep"), mx && mx->t == V_INT ? mx->i : -1, pos);
        }
        if (M("replace")) {
            jv a = need_str(R, arg(A, 0, "old"), pos, "replace"), b = need_str(R, arg(A, 1, "new"), pos, "replace");
            const jv *c = arg(A, 2, "count");
            return str_replace(R, o, a, b, c && c->t == V_INT ? c->i : -1, pos);
        }
        if (M("upper")) return ascii_case(R, o, 1, pos);
        if (M("lower")) return ascii_case(R, o, 0, pos);
        if (M("capitalize")) return ascii_case(R, ascii_case(R, o, 0, pos), 2, pos);
        if (M("title")) return ascii_case(R, o, 3, pos);
        if (M("join")) {
            const jv *l = arg(A, 0, "iterable");
            if (!l) jfail(&R->c, pos, US_EINVAL, "join needs an argument");
            args B = {.np = 1, .pos = {o}};
            return call_filter(R, "join", 4, *l, &B, pos);
        }
        if (M("find") || M("count")) {
            jv s = need_str(R, arg(A, 0, "sub"), pos, "find");
            if (M("find")) {
                const char *f = s.s.n ? memmem(o.s.p, o.s.n, s.s.p, s.s.n) : o.s.p;
                return ji_(f ? (int64_t)cp_len(o.s.p, (size_t)(f - o.s.p)) : -1);
            }
            if (!s.s.n) return ji_((int64_t)cp_len(o.s.p, o.s.n) + 1);
            int64_t k = 0;
            for (const char *p = o.s.p; (p = memmem(p, (size_t)(o.s.p + o.s.n - p), s.s.p, s.s.n)); p += s.s.n) k++;
            return ji_(k);
        }
    } else if (o.t == V_DICT) {
        if (M("get")) {
            const jv *k = arg(A, 0, "key"), *d = arg(A, 1, "default");
            if (!k) jfail(&R->c, pos, US_EINVAL, "get needs a key");
            jv *p = dict_find(o.d, k);
            return p ? *p : d ? *d : NONE;
        }
        if (M("items") || M("keys") || M("values")) {
            jlist *l = new_list(R, o.d->n, pos);
            for (size_t i = 0; i < o.d->n; i++) {
                if (M("keys")) l->v[i] = o.d->k[i];
                else if (M("values")) l->v[i] = o.d->v[i];
                else {
                    jlist *pr = new_list(R, 2, pos);
                    pr->v[0] = o.d->k[i];
                    pr->v[1] = o.d->v[i];
                    l->v[i] = (jv){.t = V_LIST, .l = pr};
                }
            }
            return (jv){.t = V_LIST, .l = l};
        }
    } else if (o.t == V_UNDEF)
        jfail(&R->c, pos, US_EINVAL, "call of '%.*s' on an undefined value", (int)mn, m);
#undef M
    jfail(&R->c, pos, US_EUNSUPPORTED, "method '%.*s' of %s is not supported", (int)mn, m, type_name(&o));
}

static jv call_global(rt *R, const node *x, const args *A) {
    const char *m = x->a->s;
    size_t mn = x->a->sn, pos = x->pos;
#define M(s) (mn == sizeof(s) - 1 && !memcmp(m, s, mn))
    if (M("raise_exception")) {
        jv s = A->np ? str_of(R, &A->pos[0], pos) : jcs("error");
        jfail(&R->c, pos, US_EINVAL, "template error: %.*s", (int)US_MIN(s.s.n, 600), s.s.p);
    }
    if (M("namespace") || M("dict")) {
        jdict *d = new_dict(R, (size_t)A->nk + 4, pos);
        if (A->np && A->pos[0].t == V_DICT)
            for (size_t i = 0; i < A->pos[0].d->n; i++) dict_set(R, d, A->pos[0].d->k[i], A->pos[0].d->v[i], pos);
        for (int i = 0; i < A->nk; i++) dict_set(R, d, js_(A->kn[i], A->kl[i]), A->kv[i], pos);
        return (jv){.t = M("dict") ? V_DICT : V_NS, .d = d};
    }
    if (M("range")) {
        int64_t a = 0, b = 0, s = 1;
        for (int i = 0; i < A->np; i++)
            if (A->pos[i].t != V_INT) jfail(&R->c, pos, US_EINVAL, "range: arguments must be integers");
        if (A->np == 1) b = A->pos[0].i;
        else if (A->np >= 2) a = A->pos[0].i, b = A->pos[1].i;
        if (A->np == 3) s = A->pos[2].i;
        if (!A->np || A->np > 3 || !s) jfail(&R->c, pos, US_EINVAL, "range: bad arguments");
        int64_t cnt = s > 0 ? (b > a ? (b - a + s - 1) / s : 0) : (a > b ? (a - b - s - 1) / -s : 0);
        if (cnt > J_MAX_ITERS) jfail(&R->c, pos, US_EINVAL, "range of more than %ld items", J_MAX_ITERS);
        jlist *l = new_list(R, (size_t)cnt, pos);
        for (int64_t i = 0; i < cnt; i++) l->v[i] = ji_(a + i * s);
        return (jv){.t = V_LIST, .l = l};
    }
    if (M("strftime_now")) {
        jv f = need_str(R, arg(A, 0, "format"), pos, "strftime_now");
        char fmt[256], buf[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)US_MIN(f.s.n, 255), f.s.p);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t k = strftime(buf, sizeof buf, fmt, &tmv);
        return js_(jstrdup(&R->c, buf, k, pos), k);
    }
#undef M
    jfail(&R->c, pos, US_EUNSUPPORTED, "function '%.*s' is not supported", (int)mn, m);
}

static jv list_of(rt *R, jv v, size_t pos) {
    jlist *src = iter_list(R, v, pos);
    return (jv){.t = V_LIST, .l = src};
}

static jv call_filter(rt *R, const char *name, size_t n, jv v, const args *A, size_t pos) {
#define F(s) (n == sizeof(s) - 1 && !memcmp(name, s, n))
    if (F("safe")) return v;
    if (F("default") || F("d")) {
        const jv *d = arg(A, 0, "default_value"), *bo = arg(A, 1, "boolean");
        bool use = v.t == V_UNDEF || (bo && truthy(bo) && !truthy(&v));
        return use ? (d ? *d : jcs("")) : v;
    }
    if (F("length") || F("count")) {
        if (v.t == V_STR) return ji_((int64_t)cp_len(v.s.p, v.s.n));
        if (v.t == V_LIST) return ji_((int64_t)v.l->n);
        if (v.t == V_DICT || v.t == V_NS) return ji_((int64_t)v.d->n);
        if (v.t == V_UNDEF) return ji_(0);
        jfail(&R->c, pos, US_EINVAL, "length of %s", type_name(&v));
    }
    if (F("tojson")) {
        const jv *ind = arg(A, 0, "indent");
        int indent = ind && ind->t == V_INT ? (int)US_MAX(0, US_MIN(ind->i, 64)) : -1;
        us_tbuf *tb = R_tmp(R);
        tojson(R, tb, &v, indent, 0, pos);
        return tb_done(R, tb, pos);
    }
    if (F("string")) return str_of(R, &v, pos);
    if (F("list")) return list_of(R, v, pos);
    if (F("items")) {
        if (v.t == V_UNDEF) return (jv){.t = V_LIST, .l = new_list(R, 0, pos)};
        if (v.t != V_DICT) jfail(&R->c, pos, US_EINVAL, "items: expected a dict, got %s", type_name(&v));
        return call_method(R, v, "items", 5, A, pos);
    }
    if (F("first") || F("last")) {
        jlist *l = iter_list(R, v, pos);
        return l->n ? l->v[F("first") ? 0 : l->n - 1] : UNDEF;
    }
    if (F("reverse")) {
        jlist *l = iter_list(R, v, pos), *r = new_list(R, l->n, pos);
        for (size_t i = 0; i < l->n; i++) r->v[i] = l->v[l->n - 1 - i];
        if (v.t == V_STR) {
            us_tbuf *tb = R_tmp(R);
            for (size_t i = 0; i < r->n; i++) tb_add(R, tb, r->v[i].s.p, r->v[i].s.n, pos);
            return tb_done(R, tb, pos);
        }
        return (jv){.t = V_LIST, .l = r};
    }
    if (F("join")) {
        const jv *sep = arg(A, 0, "d"), *attr = arg(A, 1, "attribute");
        jv sp = sep ? str_of(R, sep, pos) : jcs("");
        jlist *l = iter_list(R, v, pos);
        us_tbuf *tb = R_tmp(R);
        for (size_t i = 0; i < l->n; i++) {
            if (i) tb_add(R, tb, sp.s.p, sp.s.n, pos);
            jv it = l->v[i];
            if (attr) it = getitem(R, it, *attr, pos);
            to_str(R, tb, &it, pos, 0);
        }
        return tb_done(R, tb, pos);
    }
    if (F("int") || F("float")) {
        const jv *d = arg(A, 0, "default");
        jv def = d ? *d : F("int") ? ji_(0) : jf_(0);
        double f;
        if (is_num(&v)) f = num_f(&v);
        else if (v.t == V_STR) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*s", (int)US_MIN(v.s.n, 63), v.s.p);
            char *end;
            f = strtod(buf, &end);
            while (*end == ' ') end++;
            if (end == buf || *end) return def;
        } else
            return def;
        if (F("float")) return jf_(f);
        if (v.t == V_INT) return v;
        return isfinite(f) ? ji_(to_int_checked(R, f, pos)) : def;
    }
    if (F("abs")) {
        if (v.t == V_INT) {
            if (v.i == INT64_MIN) jfail(&R->c, pos, US_EINVAL, "integer overflow");
            return ji_(v.i < 0 ? -v.i : v.i);
        }
        if (v.t == V_FLOAT) return jf_(fabs(v.f));
        jfail(&R->c, pos, US_EINVAL, "abs of %s", type_name(&v));
    }
    if (F("map") || F("select") || F("reject") || F("selectattr") || F("rejectattr") || F("unique") || F("sum") ||
        F("min") || F("max")) {
        jlist *l = iter_list(R, v, pos);
        jlist *r = new_list(R, l->n, pos);
        size_t k = 0;
        if (F("map")) {
            const jv *at = arg(A, -1, "attribute");
            const jv *fn = A->np ? &A->pos[0] : NULL;
            if (!at && (!fn || fn->t != V_STR)) jfail(&R->c, pos, US_EINVAL, "map needs attribute= or a filter name");
            if (fn && !at && !in_list(filters, fn->s.p, fn->s.n))
                jfail(&R->c, pos, US_EUNSUPPORTED, "filter '%.*s' is not supported", (int)fn->s.n, fn->s.p);
            args B = {0};
            for (int i = 1; i < A->np; i++) B.pos[B.np++] = A->pos[i];
            const jv *dflt = arg(A, -1, "default");
            for (size_t i = 0; i < l->n; i++) {
                count_iter(R, pos);
                if (at) {
                    jv it = getitem(R, l->v[i], *at, pos);
                    r->v[k++] = it.t == V_UNDEF && dflt ? *dflt : it;
                } else
                    r->v[k++] = call_filter(R, fn->s.p, fn->s.n, l->v[i], &B, pos);
            }
        } else if (F("unique")) {
            for (size_t i = 0; i < l->n; i++) {
                bool seen = false;
                for (size_t j = 0; j < k && !seen; j++) seen = jv_eq(&r->v[j], &l->v[i]);
                count_iter(R, pos);
                if (!seen) r->v[k++] = l->v[i];
            }
        } else if (F("sum") || F("min") || F("max")) {
            jv acc = F("sum") ? ji_(0) : UNDEF;
            for (size_t i = 0; i < l->n; i++) {
                if (F("sum")) acc = binop(R, '+', acc, l->v[i], pos);
                else if (acc.t == V_UNDEF || cmp_order(R, l->v[i], acc, pos) == (F("min") ? -1 : 1)) acc = l->v[i];
            }
            return acc;
        } else {
            bool attr = F("selectattr") || F("rejectattr"), want = F("select") || F("selectattr");
            int base = attr ? 1 : 0;
            const jv *tn = arg(A, base, NULL);
            if (attr && !A->np) jfail(&R->c, pos, US_EINVAL, "%.*s needs an attribute", (int)n, name);
            if (tn && (tn->t != V_STR || !in_list(tests, tn->s.p, tn->s.n)))
                jfail(&R->c, pos, US_EUNSUPPORTED, "test in %.*s is not supported", (int)n, name);
            args B = {0};
            for (int i = base + 1; i < A->np; i++) B.pos[B.np++] = A->pos[i];
            for (size_t i = 0; i < l->n; i++) {
                count_iter(R, pos);
                jv it = attr ? getitem(R, l->v[i], A->pos[0], pos) : l->v[i];
                bool ok = tn ? run_test(R, tn->s.p, tn->s.n, it, &B, pos) : truthy(&it);
                if (ok == want) r->v[k++] = l->v[i];
            }
        }
        r->n = k;
        return (jv){.t = V_LIST, .l = r};
    }
    if (F("indent")) {
        jv s = str_of(R, &v, pos);
        const jv *w = arg(A, 0, "width"), *first = arg(A, 1, "first"), *blank = arg(A, 2, "blank");
        jv pad = w && w->t == V_STR ? *w : jcs("    ");
        if (w && w->t == V_INT) {
            int64_t k = US_MAX(0, US_MIN(w->i, 256));
            char *p = jalloc(&R->c, (size_t)k + 1, pos);
            memset(p, ' ', (size_t)k);
            pad = js_(p, (size_t)k);
        }
        us_tbuf *tb = R_tmp(R);
        size_t i = 0;
        bool firstl = true;
        while (i <= s.s.n) {
            const char *nl = memchr(s.s.p + i, '\n', s.s.n - i);
            size_t e = nl ? (size_t)(nl - s.s.p) : s.s.n;
            bool empty = e == i;
            if ((firstl ? first && truthy(first) : true) && (!empty || (blank && truthy(blank))))
                tb_add(R, tb, pad.s.p, pad.s.n, pos);
            tb_add(R, tb, s.s.p + i, e - i, pos);
            if (!nl) break;
            tb_add(R, tb, "\n", 1, pos);
            i = e + 1;
            firstl = false;
        }
        return tb_done(R, tb, pos);
    }
    /* string filters */
    if (v.t == V_UNDEF && (F("trim") || F("upper") || F("lower") || F("capitalize") || F("title") || F("replace")))
        v = jcs("");
    jv s = str_of(R, &v, pos);
    if (F("trim")) {
        const jv *ch = arg(A, 0, "chars");
        if (ch && ch->t == V_NONE) ch = NULL;
        if (ch) need_str(R, ch, pos, "trim");
        return py_strip(s, ch, true, true);
    }
    if (F("upper")) return ascii_case(R, s, 1, pos);
    if (F("lower")) return ascii_case(R, s, 0, pos);
    if (F("capitalize")) return ascii_case(R, ascii_case(R, s, 0, pos), 2, pos);
    if (F("title")) return ascii_case(R, s, 3, pos);
    if (F("replace")) {
        jv a = str_of(R, arg(A, 0, "old") ? arg(A, 0, "old") : &(jv){.t = V_STR, .s = {"", 0}}, pos);
        const jv *bn = arg(A, 1, "new");
        jv b = bn ? str_of(R, bn, pos) : jcs("");
        const jv *c = arg(A, 2, "count");
        return str_replace(R, s, a, b, c && c->t == V_INT ? c->i : -1, pos);
    }
#undef F
    jfail(&R->c, pos, US_EUNSUPPORTED, "filter '%.*s' is not supported", (int)n, name);
}

static bool run_test(rt *R, const char *name, size_t n, jv v, const args *A, size_t pos) {
#define T(s) (n == sizeof(s) - 1 && !memcmp(name, s, n))
    const jv *o = arg(A, 0, NULL);
    if (T("defined")) return v.t != V_UNDEF;
    if (T("undefined")) return v.t == V_UNDEF;
    if (T("none")) return v.t == V_NONE;
    if (T("string")) return v.t == V_STR;
    if (T("mapping")) return v.t == V_DICT || v.t == V_NS;
    if (T("iterable")) return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
    if (T("sequence")) return v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    if (T("number")) return is_num(&v);
    if (T("integer")) return v.t == V_INT;
    if (T("float")) return v.t == V_FLOAT;
    if (T("boolean")) return v.t == V_BOOL;
    if (T("true")) return v.t == V_BOOL && v.b;
    if (T("false")) return v.t == V_BOOL && !v.b;
    if (T("callable")) return false;
    if (T("lower") || T("upper")) {
        if (v.t != V_STR) return false;
        bool any = false;
        for (size_t i = 0; i < v.s.n; i++) {
            char ch = v.s.p[i];
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
                any = true;
                if ((ch >= 'a') != (bool)T("lower")) return false;
            }
        }
        return any;
    }
    if ((T("odd") || T("even")) && v.t == V_INT) return (v.i % 2 != 0) == (bool)T("odd");
    if (!o) jfail(&R->c, pos, US_EINVAL, "test '%.*s' needs an argument", (int)n, name);
    if (T("eq") || T("equalto") || T("==")) return jv_eq(&v, o);
    if (T("ne") || T("!=")) return !jv_eq(&v, o);
    if (T("sameas")) return v.t == o->t && jv_eq(&v, o);
    if (T("lt") || T("<")) return cmp_order(R, v, *o, pos) < 0;
    if (T("le") || T("<=")) return cmp_order(R, v, *o, pos) <= 0;
    if (T("gt") || T(">")) return cmp_order(R, v, *o, pos) > 0;
    if (T("ge") || T(">=")) return cmp_order(R, v, *o, pos) >= 0;
    if (T("in")) return contains(R, *o, v, pos);
    if (T("odd") || T("even") || T("divisibleby")) {
        if (v.t != V_INT) jfail(&R->c, pos, US_EINVAL, "test '%.*s' needs an integer", (int)n, name);
        if (T("divisibleby")) {
            if (o->t != V_INT || !o->i) jfail(&R->c, pos, US_EINVAL, "divisibleby needs a non-zero integer");
            return o->i == -1 || v.i % o->i == 0;
        }
    }
#undef T
    jfail(&R->c, pos, US_EUNSUPPORTED, "test '%.*s' is not supported", (int)n, name);
}

static void depth_in(rt *R, size_t pos) {
    if (++R->depth > J_MAX_DEPTH) jfail(&R->c, pos, US_EINVAL, "evaluation nested too deeply");
}

static jv eval(rt *R, const node *x) {
    depth_in(R, x->pos);
    jv r = UNDEF;
    switch (x->k) {
    case N_LIT: r = x->lit; break;
    case N_NAME:
        if (!get_var(R, x->s, x->sn, &r)) r = UNDEF;
        break;
    case N_LIST: {
        jlist *l = new_list(R, x->nk, x->pos);
        for (size_t i = 0; i < x->nk; i++) l->v[i] = eval(R, x->kids[i]);
        r = (jv){.t = V_LIST, .l = l};
        break;
    }
    case N_DICT: {
        jdict *d = new_dict(R, x->nk / 2 + 1, x->pos);
        for (size_t i = 0; i + 1 < x->nk; i += 2) {
            jv k = eval(R, x->kids[i]);
            dict_set(R, d, k, eval(R, x->kids[i + 1]), x->pos);
        }
        r = (jv){.t = V_DICT, .d = d};
        break;
    }
    case N_ATTR: r = getattr_(R, eval(R, x->a), x->s, x->sn, x->pos); break;
    case N_INDEX: {
        jv o = eval(R, x->a);
        r = getitem(R, o, eval(R, x->b), x->pos);
        break;
    }
    case N_SLICE: {
        jv o = eval(R, x->a), a, b, c;
        if (x->b) a = eval(R, x->b);
        if (x->c) b = eval(R, x->c);
        if (x->d) c = eval(R, x->d);
        r = slice(R, o, x->b ? &a : NULL, x->c ? &b : NULL, x->d ? &c : NULL, x->pos);
        break;
    }
    case N_CALL: {
        args A;
        if (x->a->k == N_ATTR) {
            jv o = eval(R, x->a->a);
            eval_args(R, x, &A);
            r = call_method(R, o, x->a->s, x->a->sn, &A, x->pos);
        } else if (x->a->k == N_NAME) {
            jv f;
            if (get_var(R, x->a->s, x->a->sn, &f) && f.t != V_UNDEF)
                jfail(&R->c, x->pos, US_EINVAL, "'%.*s' is not callable", (int)x->a->sn, x->a->s);
            eval_args(R, x, &A);
            r = call_global(R, x, &A);
        } else
            jfail(&R->c, x->pos, US_EUNSUPPORTED, "this kind of call is not supported");
        break;
    }
    case N_FILTER: {
        jv v = eval(R, x->a);
        args A;
        eval_args(R, x, &A);
        r = call_filter(R, x->s, x->sn, v, &A, x->pos);
        break;
    }
    case N_TEST: {
        jv v = eval(R, x->a);
        args A;
        eval_args(R, x, &A);
        r = jb_(run_test(R, x->s, x->sn, v, &A, x->pos) != (bool)x->op);
        break;
    }
    case N_NEG: case N_POS: {
        jv v = eval(R, x->a);
        if (!is_num(&v)) jfail(&R->c, x->pos, US_EINVAL, "unary %c on %s", x->k == N_NEG ? '-' : '+', type_name(&v));
        if (x->k == N_POS) r = v.t == V_BOOL ? ji_(v.b) : v;
        else if (v.t == V_FLOAT) r = jf_(-v.f);
        else if (num_i(&v) == INT64_MIN) jfail(&R->c, x->pos, US_EINVAL, "integer overflow");
        else r = ji_(-num_i(&v));
        break;
    }
    case N_BIN: {
        jv a = eval(R, x->a);
        r = binop(R, x->op, a, eval(R, x->b), x->pos);
        break;
    }
    case N_AND: {
        jv a = eval(R, x->a);
        r = truthy(&a) ? eval(R, x->b) : a;
        break;
    }
    case N_OR: {
        jv a = eval(R, x->a);
        r = truthy(&a) ? a : eval(R, x->b);
        break;
    }
    case N_NOT: {
        jv a = eval(R, x->a);
        r = jb_(!truthy(&a));
        break;
    }
    case N_CMP: {
        jv a = eval(R, x->a), b = eval(R, x->b);
        switch (x->op) {
        case C_EQ: r = jb_(jv_eq(&a, &b)); break;
        case C_NE: r = jb_(!jv_eq(&a, &b)); break;
        case C_LT: r = jb_(cmp_order(R, a, b, x->pos) < 0); break;
        case C_LE: r = jb_(cmp_order(R, a, b, x->pos) <= 0); break;
        case C_GT: r = jb_(cmp_order(R, a, b, x->pos) > 0); break;
        case C_GE: r = jb_(cmp_order(R, a, b, x->pos) >= 0); break;
        case C_IN: r = jb_(contains(R, b, a, x->pos)); break;
        default: r = jb_(!contains(R, b, a, x->pos)); break;
        }
        break;
    }
    case N_COND: {
        jv c = eval(R, x->a);
        r = truthy(&c) ? eval(R, x->b) : x->c ? eval(R, x->c) : UNDEF;
        break;
    }
    default: jfail(&R->c, x->pos, US_EINVAL, "internal: not an expression");
    }
    R->depth--;
    return r;
}

static void push_scope(rt *R, size_t pos) {
    if (R->nsc >= J_MAX_DEPTH) jfail(&R->c, pos, US_EINVAL, "loops nested too deeply");
    R->sc[R->nsc++].n = 0; /* the storage of a popped scope is reused: nothing points into it */
}

static void exec_for(rt *R, const node *x) {
    jv it = eval(R, x->a);
    jlist *all = iter_list(R, it, x->pos);
    jlist *l = all;
    if (x->d) { /* the loop filter runs first: loop.length counts what passes */
        l = new_list(R, all->n, x->pos);
        size_t k = 0;
        push_scope(R, x->pos);
        for (size_t i = 0; i < all->n; i++) {
            count_iter(R, x->pos);
            R->sc[R->nsc - 1].n = 0;
            if (x->nk == 1) set_var(R, R->nsc - 1, x->kids[0]->s, x->kids[0]->sn, all->v[i], x->pos);
            else {
                jv e = all->v[i];
                if (e.t != V_LIST || e.l->n != x->nk) jfail(&R->c, x->pos, US_EINVAL, "cannot unpack loop item into %zu names", x->nk);
                for (size_t t = 0; t < x->nk; t++) set_var(R, R->nsc - 1, x->kids[t]->s, x->kids[t]->sn, e.l->v[t], x->pos);
            }
            jv c = eval(R, x->d);
            if (truthy(&c)) l->v[k++] = all->v[i];
        }
        R->nsc--;
        l->n = k;
    }
    if (!l->n) {
        if (x->c) exec(R, x->c);
        return;
    }
    jdict *loop = new_dict(R, 10, x->pos); /* one object advanced in place, as Jinja's loop is */
    for (size_t i = 0; i < l->n; i++) {
        count_iter(R, x->pos);
        push_scope(R, x->pos);
        int lv = R->nsc - 1;
        int64_t n = (int64_t)l->n, k = (int64_t)i;
        dict_set(R, loop, jcs("index0"), ji_(k), x->pos);
        dict_set(R, loop, jcs("index"), ji_(k + 1), x->pos);
        dict_set(R, loop, jcs("revindex0"), ji_(n - k - 1), x->pos);
        dict_set(R, loop, jcs("revindex"), ji_(n - k), x->pos);
        dict_set(R, loop, jcs("first"), jb_(k == 0), x->pos);
        dict_set(R, loop, jcs("last"), jb_(k == n - 1), x->pos);
        dict_set(R, loop, jcs("length"), ji_(n), x->pos);
        dict_set(R, loop, jcs("previtem"), k ? l->v[k - 1] : UNDEF, x->pos);
        dict_set(R, loop, jcs("nextitem"), k + 1 < n ? l->v[k + 1] : UNDEF, x->pos);
        set_var(R, lv, "loop", 4, (jv){.t = V_DICT, .d = loop}, x->pos);
        if (x->nk == 1) set_var(R, lv, x->kids[0]->s, x->kids[0]->sn, l->v[i], x->pos);
        else {
            jv e = l->v[i];
            if (e.t != V_LIST || e.l->n != x->nk) jfail(&R->c, x->pos, US_EINVAL, "cannot unpack loop item into %zu names", x->nk);
            for (size_t t = 0; t < x->nk; t++) set_var(R, lv, x->kids[t]->s, x->kids[t]->sn, e.l->v[t], x->pos);
        }
        exec(R, x->b);
        R->nsc--;
        int b = R->brk;
        R->brk = 0;
        if (b == 1) break;
    }
}

static void exec(rt *R, const node *x) {
    depth_in(R, x->pos);
    switch (x->k) {
    case N_BLOCK:
        for (size_t i = 0; i < x->nk && !R->brk; i++) exec(R, x->kids[i]);
        break;
    case N_TEXT: tb_add(R, R->out, x->s, x->sn, x->pos); break;
    case N_OUT: {
        jv v = eval(R, x->a);
        to_str(R, R->out, &v, x->pos, 0);
        break;
    }
    case N_IF: {
        jv c = eval(R, x->a);
        if (truthy(&c)) exec(R, x->b);
        else if (x->c) exec(R, x->c);
        break;
    }
    case N_FOR: exec_for(R, x); break;
    case N_SET: {
        jv v = eval(R, x->a);
        if (x->s2) {
            jv ns;
            if (!get_var(R, x->s, x->sn, &ns) || ns.t != V_NS)
                jfail(&R->c, x->pos, US_EINVAL, "cannot assign attribute on '%.*s': not a namespace", (int)x->sn, x->s);
            dict_set(R, ns.d, js_(x->s2, x->s2n), v, x->pos);
        } else
            set_var(R, R->nsc - 1, x->s, x->sn, v, x->pos);
        break;
    }
    case N_SETBLOCK: {
        us_tbuf *saved = R->out, *tb = R_tmp(R);
        R->out = tb;
        exec(R, x->b);
        R->out = saved;
        set_var(R, R->nsc - 1, x->s, x->sn, tb_done(R, tb, x->pos), x->pos);
        break;
    }
    case N_BREAK: case N_CONTINUE: {
        bool in_loop = false;
        jv lp;
        in_loop = R->nsc > 1 && get_var(R, "loop", 4, &lp);
        if (!in_loop) jfail(&R->c, x->pos, US_EFORMAT, "break/continue outside a loop");
        R->brk = x->k == N_BREAK ? 1 : 2;
        break;
    }
    default: jfail(&R->c, x->pos, US_EINVAL, "internal: not a statement");
    }
    R->depth--;
}

/* ---- temporary buffers: a fixed set, released by tb_done, all freed when rendering ends */

static us_tbuf *R_tmp(rt *R) {
    for (int i = 0; i < 64; i++)
        if (!R->tmp_used[i]) {
            R->tmp_used[i] = true;
            us_tbuf_free(&R->tmp[i]);
            return &R->tmp[i];
        }
    jfail(&R->c, 0, US_EINVAL, "too many nested temporary strings");
}

/* ---- converting the JSON context */

static jv from_json(rt *R, const cJSON *j, int depth) {
    if (depth > J_MAX_DEPTH) jfail(&R->c, 0, US_EINVAL, "context nested too deeply");
    if (cJSON_IsString(j)) return jcs(j->valuestring);
    if (cJSON_IsBool(j)) return jb_(cJSON_IsTrue(j));
    if (cJSON_IsNull(j)) return NONE;
    if (cJSON_IsNumber(j)) {
        double f = j->valuedouble;
        if (f == floor(f) && fabs(f) < 9e15) {
            /* an integer unless the JSON spelled a fraction or exponent */
            return ji_((int64_t)f);
        }
        return jf_(f);
    }
    if (cJSON_IsArray(j)) {
        jlist *l = new_list(R, (size_t)cJSON_GetArraySize(j), 0);
        size_t i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, j) l->v[i++] = from_json(R, it, depth + 1);
        return (jv){.t = V_LIST, .l = l};
    }
    if (cJSON_IsObject(j)) {
        jdict *d = new_dict(R, (size_t)cJSON_GetArraySize(j) + 1, 0);
        const cJSON *it;
        cJSON_ArrayForEach(it, j) dict_set(R, d, jcs(it->string ? it->string : ""), from_json(R, it, depth + 1), 0);
        return (jv){.t = V_DICT, .d = d};
    }
    return NONE;
}

us_status us_jinja_render(const us_jinja *t, const cJSON *ctx, char **out, size_t *len, us_err *e) {
    *out = NULL;
    if (len) *len = 0;
    /* everything the error path needs lives in *R (heap), not in locals changed after setjmp */
    rt *R = calloc(1, sizeof *R);
    if (!R) return us_fail(e, US_ENOMEM, "out of memory");
    R->c = (jctx){.src = t->src, .name = t->name, .ar = &R->ar, .e = e};
    R->out = &R->ob;
    if (!setjmp(R->c.jb)) {
        R->nsc = 1;
        if (ctx) {
            const cJSON *it;
            cJSON_ArrayForEach(it, ctx) if (it->string)
                set_var(R, 0, it->string, strlen(it->string), from_json(R, it, 0), 0);
        }
        push_scope(R, 0); /* template-level set */
        exec(R, t->root);
        tb_add(R, &R->ob, "", 0, 0);
    }
    us_status st = R->c.st;
    for (int i = 0; i < 64; i++) free(R->tmp[i].p);
    arena_free(&R->ar);
    if (st) us_tbuf_free(&R->ob);
    else {
        *out = R->ob.p;
        if (len) *len = R->ob.n;
    }
    free(R);
    return st;
}
