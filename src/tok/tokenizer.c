/* tokenizer.c — Hugging Face tokenizer.json loading, encoding and decoding.
 *
 * Design. Encoding runs the same stages as the Rust `tokenizers` crate, in order:
 *   1. added tokens are cut out of the raw text (a byte trie, leftmost-longest match);
 *   2. each remaining section is normalized (a flat list of normalizer steps);
 *   3. pre-tokenizers turn the section into pieces: a list of (offset, length) spans over a
 *      working buffer; Split runs a PCRE2 regex (UTF+UCP, JIT when available) inside each span;
 *   4. each piece ("word") goes through BPE; results are cached per word;
 *   5. the post-processor template adds BOS/EOS when asked.
 * Byte-level vocabularies (GPT-2 style, where byte 0x20 is spelled "Ġ") are translated back to raw
 * bytes at load time, so the ByteLevel pre-tokenizer needs no text rewriting, BPE works on the
 * bytes of the text directly and decoding is concatenation. SentencePiece-style vocabularies keep
 * their strings ("▁the"); BPE starts from code points and falls back to <0xNN> byte tokens.
 *
 * BPE: symbols live in a doubly-linked array; candidate merges sit in a binary heap ordered by
 * (merge rank, position of the left symbol), each entry re-validated when popped; the merge table
 * is an open-addressing hash from the (left id, right id) pair to (rank, merged id).
 *
 * Everything a file can get wrong comes back as a us_status naming the file and the field. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok/tokenizer.h"

#include <cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tok/tok_internal.h"

/* ---------------------------------------------------------------- UTF-8 */

size_t us_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp) {
    if (len == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) n = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

size_t us_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool us_utf8_valid(const char *s, size_t len, size_t *bad_at) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = us_utf8_decode(p + i, len - i, &cp);
        if (!k) {
            if (bad_at) *bad_at = i;
            return false;
        }
        i += k;
    }
    return true;
}

/* Appends s with invalid sequences replaced by U+FFFD (one per maximal invalid subpart). */
static bool utf8_lossy_append(us_tbuf *out, const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t k = p[i] < 0x80 ? 1 : us_utf8_decode(p + i, len - i, &cp);
        if (k) {
            if (!us_tbuf_add(out, s + i, k)) return false;
            i += k;
            continue;
        }
        /* maximal subpart: the lead byte plus the continuation bytes that were still plausible */
        unsigned c = p[i];
        size_t need = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 1;
        size_t j = 1;
        while (j < need && i + j < len) {
            unsigned d = p[i + j];
            unsigned lo = 0x80, hi = 0xBF;
            if (j == 1) {
                if (c == 0xE0) lo = 0xA0;
                else if (c == 0xED) hi = 0x9F;
                else if (c == 0xF0) lo = 0x90;
                else if (c == 0xF4) hi = 0x8F;
            }
            if (d < lo || d > hi) break;
            j++;
        }
        if (!us_tbuf_add(out, "\xEF\xBF\xBD", 3)) return false;
        i += j;
    }
    return true;
}

/* ---------------------------------------------------------------- hash maps */

/* String -> id map over the tokenizer's own token strings (the key of an entry is the string of
 * its id), so the table only stores ids and hashes. */
typedef struct strmap {
    int32_t *ids;
    uint32_t *hashes;
    size_t cap; /* power of two */
    size_t n;
} strmap;

typedef struct tokstr {
    uint32_t off, len;
} tokstr;

typedef struct merge_map {
    uint64_t *keys; /* (left << 32) | right; UINT64_MAX = empty */
    uint64_t *vals; /* (rank << 32) | merged id */
    size_t cap;
} merge_map;

/* ---------------------------------------------------------------- tokenizer */

typedef enum { NRM_NFC, NRM_PREPEND, NRM_REPLACE, NRM_STRIP, NRM_LOWER } nrm_kind;
typedef struct nrm {
    nrm_kind kind;
    char *a, *b;          /* Prepend: a; Replace: pattern (literal) a -> b */
    pcre2_code *re;       /* Replace with a Regex pattern */
    bool left, right;     /* Strip */
} nrm;

typedef enum { BH_ISOLATED, BH_REMOVED, BH_MERGED_PREV, BH_MERGED_NEXT, BH_CONTIGUOUS } split_behavior;
typedef enum { PT_SPLIT, PT_BYTELEVEL, PT_METASPACE } pt_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;
typedef struct pretok {
    pt_kind kind;
    pcre2_code *re;
    split_behavior behavior;
    bool invert;
    bool add_prefix_space; /* ByteLevel */
    char *replacement;     /* Metaspace */
    prepend_scheme scheme;
    bool split;
} pretok;

typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } dec_kind;
typedef struct decoder {
    dec_kind kind;
    char *a, *b;
    int start, stop;
    prepend_scheme scheme;
} decoder;

typedef struct added_tok {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, single_word, normalized;
} added_tok;

typedef struct trie_node {
    int32_t first_child, sibling, added; /* added: index into added[], or -1 */
    unsigned char byte;
} trie_node;

typedef struct cache_entry {
    char *key;
    uint32_t klen;
    uint32_t n;
    int32_t *ids;
    uint64_t hash;
} cache_entry;

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t start, len; /* bytes of the word */
} sym;

typedef struct heap_ent {
    uint32_t rank, pos;
    int32_t left, right, merged;
} heap_ent;

struct us_tokenizer {
    char path[512];
    /* vocabulary */
    char *pool;
    size_t pool_n, pool_cap;
    tokstr *tokens; /* by id; len == UINT32_MAX: no token */
    int32_t vocab_size;
    strmap vocab;
    bool *special; /* by id */
    bool byte_level;
    int32_t byte_id[256]; /* byte-level: id of each single byte; SP: <0xNN> tokens */
    bool byte_fallback;
    bool ignore_merges;
    bool fuse_unk;
    int32_t unk_id;
    merge_map merges;
    /* pipeline */
    nrm *nrms;
    int n_nrms;
    pretok *pts;
    int n_pts;
    decoder *decs;
    int n_decs;
    bool has_decoder;
    added_tok *added;
    int n_added;
    trie_node *trie;
    int n_trie, cap_trie;
    int32_t trie_root[256];
    /* post-processor: template of ids, -2 marks the sequence */
    int32_t *tmpl;
    int n_tmpl;
    /* config */
    char *chat_template, *bos_token, *eos_token, *pad_token;
    int32_t bos_id, eos_id, pad_id;
    /* scratch (not thread-safe) */
    pcre2_match_data *md;
    us_tbuf sa, sb;
    sym *syms;
    size_t cap_syms;
    heap_ent *heap;
    size_t cap_heap;
    cache_entry *cache;
    size_t cache_cap, cache_n;
};

/* ---------------------------------------------------------------- vocabulary storage */

static bool pool_add(us_tokenizer *t, const char *s, size_t n, tokstr *out) {
    if (t->pool_n + n + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 20;
        while (cap < t->pool_n + n + 1) cap *= 2;
        char *p = realloc(t->pool, cap);
        if (!p) return false;
        t->pool = p;
        t->pool_cap = cap;
    }
    memcpy(t->pool + t->pool_n, s, n);
    t->pool[t->pool_n + n] = 0;
    out->off = (uint32_t)t->pool_n;
    out->len = (uint32_t)n;
    t->pool_n += n + 1;
    return true;
}

static inline const char *tok_str(const us_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->vocab_size || t->tokens[id].len == UINT32_MAX) return NULL;
    if (len) *len = t->tokens[id].len;
    return t->pool + t->tokens[id].off;
}

static int32_t vocab_find(const us_tokenizer *t, const char *s, size_t n) {
    if (!t->vocab.cap) return -1;
    uint64_t h64 = us_str_hash(s, n);
    uint32_t h = (uint32_t)h64;
    size_t mask = t->vocab.cap - 1, i = (size_t)(h64 >> 20) & mask;
    for (;;) {
        int32_t id = t->vocab.ids[i];
        if (id < 0) return -1;
        if (t->vocab.hashes[i] == h && t->tokens[id].len == n && memcmp(t->pool + t->tokens[id].off, s, n) == 0)
            return id;
        i = (i + 1) & mask;
    }
}

/* Inserts id under its own string; an existing entry for the same string is replaced. */
static bool vocab_insert(us_tokenizer *t, int32_t id) {
    if ((t->vocab.n + 1) * 4 > t->vocab.cap * 3) {
        size_t cap = t->vocab.cap ? t->vocab.cap * 2 : 1024;
        int32_t *ids = malloc(cap * sizeof *ids);
        uint32_t *hs = malloc(cap * sizeof *hs);
        if (!ids || !hs) {
            free(ids);
            free(hs);
            return false;
        }
        memset(ids, 0xFF, cap * sizeof *ids);
        for (size_t i = 0; i < t->vocab.cap; i++) {
            int32_t v = t->vocab.ids[i];
            if (v < 0) continue;
            uint64_t h64 = us_str_hash(t->pool + t->tokens[v].off, t->tokens[v].len);
            size_t j = (size_t)(h64 >> 20) & (cap - 1);
            while (ids[j] >= 0) j = (j + 1) & (cap - 1);
            ids[j] = v;
            hs[j] = (uint32_t)h64;
        }
        free(t->vocab.ids);
        free(t->vocab.hashes);
        t->vocab.ids = ids;
        t->vocab.hashes = hs;
        t->vocab.cap = cap;
    }
    const char *s = t->pool + t->tokens[id].off;
    size_t n = t->tokens[id].len;
    uint64_t h64 = us_str_hash(s, n);
    size_t mask = t->vocab.cap - 1, i = (size_t)(h64 >> 20) & mask;
    for (;;) {
        int32_t v = t->vocab.ids[i];
        if (v < 0) break;
        if (t->tokens[v].len == n && memcmp(t->pool + t->tokens[v].off, s, n) == 0) {
            t->vocab.ids[i] = id;
            return true;
        }
        i = (i + 1) & mask;
    }
    t->vocab.ids[i] = id;
    t->vocab.hashes[i] = (uint32_t)h64;
    t->vocab.n++;
    return true;
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    return x;
}

static bool merge_lookup(const us_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *merged) {
    if (!t->merges.cap || a < 0 || b < 0) return false;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merges.cap - 1, i = (size_t)mix64(k) & mask;
    for (;;) {
        uint64_t kk = t->merges.keys[i];
        if (kk == UINT64_MAX) return false;
        if (kk == k) {
            *rank = (uint32_t)(t->merges.vals[i] >> 32);
            *merged = (int32_t)(uint32_t)t->merges.vals[i];
            return true;
        }
        i = (i + 1) & mask;
    }
}

/* First insertion wins (a merge listed twice keeps its better rank). */
static void merge_insert(us_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merges.cap - 1, i = (size_t)mix64(k) & mask;
    while (t->merges.keys[i] != UINT64_MAX) {
        if (t->merges.keys[i] == k) return;
        i = (i + 1) & mask;
    }
    t->merges.keys[i] = k;
    t->merges.vals[i] = ((uint64_t)rank << 32) | (uint32_t)merged;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's reversible byte <-> code point table: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes are moved to U+0100 and up, in byte order. */
static uint32_t g_byte_to_cp[256];
static int16_t g_cp_to_byte[512];
static void byte_tables_init(void) {
    if (g_byte_to_cp['!']) return;
    for (int i = 0; i < 512; i++) g_cp_to_byte[i] = -1;
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        g_byte_to_cp[b] = keep ? (uint32_t)b : next++;
        g_cp_to_byte[g_byte_to_cp[b]] = (int16_t)b;
    }
}

/* "Ġhello" -> " hello". False when some character is outside the alphabet. */
static bool bytelevel_to_raw(const char *s, size_t n, us_tbuf *out) {
    out->n = 0;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = us_utf8_decode(p + i, n - i, &cp);
        if (!k || cp >= 512 || g_cp_to_byte[cp] < 0) return false;
        if (!us_tbuf_addc(out, (char)g_cp_to_byte[cp])) return false;
        i += k;
    }
    return true;
}

/* ---------------------------------------------------------------- regexes */

static pcre2_code *re_compile(const char *pat, size_t len, bool literal, const char *path, const char *what,
                              us_err *e) {
    int errc;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &errc, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errc, msg, sizeof msg);
        us_fail(e, US_EFORMAT, "%s: %s: regex does not compile at offset %zu: %s", path, what, (size_t)erroff,
                (char *)msg);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter when unavailable */
    return re;
}

/* Calls fn for each non-empty match of re in s[0..n): fills (start, end) pairs into a list. */
typedef struct span {
    size_t s, e;
} span;
typedef struct spanlist {
    span *v;
    size_t n, cap;
} spanlist;

static bool spans_push(spanlist *l, size_t s, size_t e) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        span *v = realloc(l->v, cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (span){s, e};
    return true;
}

static int re_find_all(us_tokenizer *t, pcre2_code *re, const char *s, size_t n, spanlist *out) {
    size_t pos = 0;
    out->n = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, t->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return rc;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: step one code point */
            size_t k = ms + 1;
            while (k < n && ((unsigned char)s[k] & 0xC0) == 0x80) k++;
            pos = k;
            continue;
        }
        if (!spans_push(out, ms, me)) return PCRE2_ERROR_NOMEMORY;
        pos = me;
    }
    return 0;
}

/* ---------------------------------------------------------------- loading helpers */

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
static bool jbool(const cJSON *o, const char *k, bool def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* pattern object: {"String": "..."} or {"Regex": "..."} */
static us_status load_pattern(const us_tokenizer *t, const cJSON *pat, const char *what, pcre2_code **re,
                              char **literal, us_err *e) {
    const char *s = jstr(pat, "String");
    const char *r = jstr(pat, "Regex");
    if (s) {
        if (literal) {
            *literal = xstrdup(s);
            if (!*literal) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
        }
        if (re) {
            *re = re_compile(s, strlen(s), true, t->path, what, e);
            if (!*re) return US_EFORMAT;
        }
        return US_OK;
    }
    if (r) {
        if (!re) return us_fail(e, US_EUNSUPPORTED, "%s: %s: a Regex pattern is not supported here", t->path, what);
        *re = re_compile(r, strlen(r), false, t->path, what, e);
        return *re ? US_OK : US_EFORMAT;
    }
    return us_fail(e, US_EFORMAT, "%s: %s: pattern must hold \"String\" or \"Regex\"", t->path, what);
}

#define GROW(arr, n, cap_expr)                                                   \
    do {                                                                         \
        void *np_ = realloc((arr), ((size_t)(n) + 1) * sizeof *(arr));           \
        if (!np_) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);    \
        (arr) = np_;                                                             \
    } while (0)

static us_status load_normalizer(us_tokenizer *t, const cJSON *n, us_err *e) {
    if (!n || cJSON_IsNull(n)) return US_OK;
    const char *type = jstr(n, "type");
    if (!type) return us_fail(e, US_EFORMAT, "%s: normalizer: missing \"type\"", t->path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return us_fail(e, US_EFORMAT, "%s: normalizer Sequence: missing list", t->path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            us_status st = load_normalizer(t, it, e);
            if (st) return st;
        }
        return US_OK;
    }
    nrm x = {0};
    if (!strcmp(type, "NFC")) x.kind = NRM_NFC;
    else if (!strcmp(type, "Lowercase")) x.kind = NRM_LOWER;
    else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return us_fail(e, US_EFORMAT, "%s: normalizer Prepend: missing \"prepend\"", t->path);
        x.kind = NRM_PREPEND;
        x.a = xstrdup(p);
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        if (!c) return us_fail(e, US_EFORMAT, "%s: normalizer Replace: missing \"content\"", t->path);
        x.kind = NRM_REPLACE;
        us_status st = load_pattern(t, cJSON_GetObjectItemCaseSensitive(n, "pattern"), "normalizer Replace", &x.re,
                                    NULL, e);
        if (st) return st;
        x.b = xstrdup(c);
    } else if (!strcmp(type, "Strip")) {
        x.kind = NRM_STRIP;
        x.left = jbool(n, "strip_left", true);
        x.right = jbool(n, "strip_right", true);
    } else {
        return us_fail(e, US_EUNSUPPORTED, "%s: normalizer type \"%s\" is not supported", t->path, type);
    }
    GROW(t->nrms, t->n_nrms, 0);
    t->nrms[t->n_nrms++] = x;
    return US_OK;
}

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static us_status load_pretok(us_tokenizer *t, const cJSON *p, us_err *e) {
    if (!p || cJSON_IsNull(p)) return US_OK;
    const char *type = jstr(p, "type");
    if (!type) return us_fail(e, US_EFORMAT, "%s: pre_tokenizer: missing \"type\"", t->path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return us_fail(e, US_EFORMAT, "%s: pre_tokenizer Sequence: missing list", t->path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            us_status st = load_pretok(t, it, e);
            if (st) return st;
        }
        return US_OK;
    }
    pretok x = {0};
    if (!strcmp(type, "Split")) {
        x.kind = PT_SPLIT;
        us_status st = load_pattern(t, cJSON_GetObjectItemCaseSensitive(p, "pattern"), "pre_tokenizer Split", &x.re,
                                    NULL, e);
        if (st) return st;
        const char *b = jstr(p, "behavior");
        if (!b || !strcmp(b, "Isolated")) x.behavior = BH_ISOLATED;
        else if (!strcmp(b, "Removed")) x.behavior = BH_REMOVED;
        else if (!strcmp(b, "MergedWithPrevious")) x.behavior = BH_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) x.behavior = BH_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) x.behavior = BH_CONTIGUOUS;
        else {
            pcre2_code_free(x.re); /* not yet owned by t */
            return us_fail(e, US_EUNSUPPORTED, "%s: pre_tokenizer Split: behavior \"%s\" unknown", t->path, b);
        }
        x.invert = jbool(p, "invert", false);
    } else if (!strcmp(type, "ByteLevel")) {
        x.kind = PT_BYTELEVEL;
        x.add_prefix_space = jbool(p, "add_prefix_space", false);
        if (jbool(p, "use_regex", true)) {
            pretok s = {0};
            s.kind = PT_SPLIT;
            s.behavior = BH_ISOLATED;
            s.re = re_compile(GPT2_RE, sizeof GPT2_RE - 1, false, t->path, "ByteLevel regex", e);
            if (!s.re) return US_EFORMAT;
            /* prefix space first, then the regex split */
            GROW(t->pts, t->n_pts, 0);
            t->pts[t->n_pts++] = x;
            GROW(t->pts, t->n_pts, 0);
            t->pts[t->n_pts++] = s;
            t->byte_level = true;
            return US_OK;
        }
        t->byte_level = true;
    } else if (!strcmp(type, "Metaspace")) {
        x.kind = PT_METASPACE;
        const char *r = jstr(p, "replacement");
        x.replacement = xstrdup(r ? r : "\xE2\x96\x81");
        const char *sch = jstr(p, "prepend_scheme");
        if (sch) x.scheme = !strcmp(sch, "first") ? PREPEND_FIRST : !strcmp(sch, "never") ? PREPEND_NEVER : PREPEND_ALWAYS;
        else x.scheme = jbool(p, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        x.split = jbool(p, "split", true);
    } else if (!strcmp(type, "Digits")) {
        x.kind = PT_SPLIT;
        x.behavior = BH_ISOLATED;
        bool ind = jbool(p, "individual_digits", false);
        const char *pat = ind ? "\\p{N}" : "\\p{N}+";
        x.re = re_compile(pat, strlen(pat), false, t->path, "Digits", e);
        if (!x.re) return US_EFORMAT;
    } else {
        return us_fail(e, US_EUNSUPPORTED, "%s: pre_tokenizer type \"%s\" is not supported", t->path, type);
    }
    GROW(t->pts, t->n_pts, 0);
    t->pts[t->n_pts++] = x;
    return US_OK;
}

static us_status load_decoder(us_tokenizer *t, const cJSON *d, us_err *e) {
    if (!d || cJSON_IsNull(d)) return US_OK;
    t->has_decoder = true;
    const char *type = jstr(d, "type");
    if (!type) return us_fail(e, US_EFORMAT, "%s: decoder: missing \"type\"", t->path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list)) return us_fail(e, US_EFORMAT, "%s: decoder Sequence: missing list", t->path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            us_status st = load_decoder(t, it, e);
            if (st) return st;
        }
        return US_OK;
    }
    decoder x = {0};
    if (!strcmp(type, "ByteLevel")) x.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) x.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) x.kind = DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        x.kind = DEC_REPLACE;
        const char *c = jstr(d, "content");
        if (!c) return us_fail(e, US_EFORMAT, "%s: decoder Replace: missing \"content\"", t->path);
        us_status st =
            load_pattern(t, cJSON_GetObjectItemCaseSensitive(d, "pattern"), "decoder Replace", NULL, &x.a, e);
        if (st) return st;
        x.b = xstrdup(c);
    } else if (!strcmp(type, "Strip")) {
        x.kind = DEC_STRIP;
        const char *c = jstr(d, "content");
        x.a = xstrdup(c ? c : " ");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, "start"), *p = cJSON_GetObjectItemCaseSensitive(d, "stop");
        x.start = cJSON_IsNumber(s) ? (int)s->valuedouble : 0;
        x.stop = cJSON_IsNumber(p) ? (int)p->valuedouble : 0;
    } else if (!strcmp(type, "Metaspace")) {
        x.kind = DEC_METASPACE;
        const char *r = jstr(d, "replacement");
        x.a = xstrdup(r ? r : "\xE2\x96\x81");
        const char *sch = jstr(d, "prepend_scheme");
        if (sch) x.scheme = !strcmp(sch, "first") ? PREPEND_FIRST : !strcmp(sch, "never") ? PREPEND_NEVER : PREPEND_ALWAYS;
        else x.scheme = jbool(d, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    } else {
        return us_fail(e, US_EUNSUPPORTED, "%s: decoder type \"%s\" is not supported", t->path, type);
    }
    GROW(t->decs, t->n_decs, 0);
    t->decs[t->n_decs++] = x;
    return US_OK;
}

static us_status load_post(us_tokenizer *t, const cJSON *p, us_err *e) {
    if (!p || cJSON_IsNull(p)) return US_OK;
    const char *type = jstr(p, "type");
    if (!type) return us_fail(e, US_EFORMAT, "%s: post_processor: missing \"type\"", t->path);
    if (!strcmp(type, "ByteLevel")) return US_OK; /* only moves offsets */
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            us_status st = load_post(t, it, e);
            if (st) return st;
        }
        return US_OK;
    }
    if (strcmp(type, "TemplateProcessing"))
        return us_fail(e, US_EUNSUPPORTED, "%s: post_processor type \"%s\" is not supported", t->path, type);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single))
        return us_fail(e, US_EFORMAT, "%s: post_processor TemplateProcessing: \"single\" must be a list", t->path);
    free(t->tmpl);
    t->tmpl = NULL;
    t->n_tmpl = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (sp) {
            const char *name = jstr(sp, "id");
            const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids))
                return us_fail(e, US_EFORMAT, "%s: post_processor: special token \"%s\" has no ids", t->path,
                               name ? name : "?");
            const cJSON *idv;
            cJSON_ArrayForEach(idv, ids) {
                if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble >= INT32_MAX)
                    return us_fail(e, US_EFORMAT, "%s: post_processor: bad id for \"%s\"", t->path, name);
                GROW(t->tmpl, t->n_tmpl, 0);
                t->tmpl[t->n_tmpl++] = (int32_t)idv->valuedouble;
            }
        } else if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            GROW(t->tmpl, t->n_tmpl, 0);
            t->tmpl[t->n_tmpl++] = -2;
        } else {
            return us_fail(e, US_EFORMAT, "%s: post_processor: template item is neither SpecialToken nor Sequence",
                           t->path);
        }
    }
    return US_OK;
}

static int32_t trie_new(us_tokenizer *t, unsigned char b) {
    if (t->n_trie == t->cap_trie) {
        int cap = t->cap_trie ? t->cap_trie * 2 : 256;
        trie_node *v = realloc(t->trie, (size_t)cap * sizeof *v);
        if (!v) return -1;
        t->trie = v;
        t->cap_trie = cap;
    }
    t->trie[t->n_trie] = (trie_node){-1, -1, -1, b};
    return t->n_trie++;
}

static bool trie_add(us_tokenizer *t, const char *s, size_t n, int idx) {
    if (!n) return true;
    const unsigned char *p = (const unsigned char *)s;
    int32_t node = t->trie_root[p[0]];
    if (node < 0) {
        node = trie_new(t, p[0]);
        if (node < 0) return false;
        t->trie_root[p[0]] = node;
    }
    for (size_t i = 1; i < n; i++) {
        int32_t c = t->trie[node].first_child;
        while (c >= 0 && t->trie[c].byte != p[i]) c = t->trie[c].sibling;
        if (c < 0) {
            c = trie_new(t, p[i]);
            if (c < 0) return false;
            t->trie[c].sibling = t->trie[node].first_child;
            t->trie[node].first_child = c;
        }
        node = c;
    }
    t->trie[node].added = idx;
    return true;
}

/* Sets a token string for id (growing the id table). */
static us_status set_token(us_tokenizer *t, int32_t id, const char *s, size_t n, size_t *cap, us_err *e) {
    if (id < 0 || id > 16 * 1024 * 1024)
        return us_fail(e, US_EFORMAT, "%s: token id %d out of range", t->path, (int)id);
    if ((size_t)id >= *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (nc <= (size_t)id) nc *= 2;
        tokstr *v = realloc(t->tokens, nc * sizeof *v);
        bool *sp = realloc(t->special, nc * sizeof *sp);
        if (v) t->tokens = v;
        if (sp) t->special = sp;
        if (!v || !sp) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
        for (size_t i = *cap; i < nc; i++) {
            t->tokens[i].len = UINT32_MAX;
            t->special[i] = false;
        }
        *cap = nc;
    }
    if (!pool_add(t, s, n, &t->tokens[id])) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
    if (id >= t->vocab_size) t->vocab_size = id + 1;
    return US_OK;
}

static us_status json_error(const char *name, const char *json, size_t len, us_err *e) {
    const char *ep = cJSON_GetErrorPtr();
    if (!ep || ep < json || ep > json + len) return us_fail(e, US_EFORMAT, "%s: malformed JSON", name);
    int line = 1, col = 1;
    for (const char *p = json; p < ep; p++) {
        if (*p == '\n') line++, col = 1;
        else col++;
    }
    return us_fail(e, US_EFORMAT, "%s:%d:%d: malformed JSON", name, line, col);
}

static us_status load_model(us_tokenizer *t, const cJSON *m, size_t *cap, us_err *e) {
    if (!cJSON_IsObject(m)) return us_fail(e, US_EFORMAT, "%s: missing \"model\" object", t->path);
    const char *type = jstr(m, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!type && merges) type = "BPE";
    if (!type) return us_fail(e, US_EFORMAT, "%s: model: missing \"type\"", t->path);
    if (strcmp(type, "BPE"))
        return us_fail(e, US_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", t->path, type);
    if (!cJSON_IsObject(vocab)) return us_fail(e, US_EFORMAT, "%s: model.vocab must be an object", t->path);
    if (!cJSON_IsArray(merges)) return us_fail(e, US_EFORMAT, "%s: model.merges must be a list", t->path);
    const char *cs = jstr(m, "continuing_subword_prefix"), *ew = jstr(m, "end_of_word_suffix");
    if ((cs && *cs) || (ew && *ew))
        return us_fail(e, US_EUNSUPPORTED, "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported",
                       t->path);
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (cJSON_IsNumber(drop) && drop->valuedouble > 0)
        return us_fail(e, US_EUNSUPPORTED, "%s: BPE dropout is not supported", t->path);
    t->byte_fallback = jbool(m, "byte_fallback", false);
    t->ignore_merges = jbool(m, "ignore_merges", false);
    t->fuse_unk = jbool(m, "fuse_unk", false);

    us_tbuf raw = {0};
    const cJSON *it;
    us_status st = US_OK;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 16 * 1024 * 1024) {
            st = us_fail(e, US_EFORMAT, "%s: model.vocab[\"%.60s\"]: id must be a non-negative integer", t->path,
                         it->string);
            break;
        }
        int32_t id = (int32_t)it->valuedouble;
        const char *s = it->string;
        size_t n = strlen(s);
        if (t->byte_level && bytelevel_to_raw(s, n, &raw)) {
            s = raw.p ? raw.p : "";
            n = raw.n;
        }
        if ((st = set_token(t, id, s, n, cap, e))) break;
    }
    us_tbuf_free(&raw);
    if (st) return st;
    for (int32_t id = 0; id < t->vocab_size; id++)
        if (t->tokens[id].len != UINT32_MAX && !vocab_insert(t, id))
            return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);

    const char *unk = jstr(m, "unk_token");
    t->unk_id = unk ? vocab_find(t, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        char c = (char)b;
        t->byte_id[b] = t->byte_level ? vocab_find(t, &c, 1) : vocab_find(t, name, strlen(name));
    }

    size_t nm = (size_t)cJSON_GetArraySize(merges);
    size_t mcap = 16;
    while (mcap < nm * 2 + 16) mcap *= 2;
    t->merges.keys = malloc(mcap * sizeof(uint64_t));
    t->merges.vals = malloc(mcap * sizeof(uint64_t));
    if (!t->merges.keys || !t->merges.vals) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
    memset(t->merges.keys, 0xFF, mcap * sizeof(uint64_t));
    t->merges.cap = mcap;
    us_tbuf a = {0}, b = {0}, ab = {0};
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *l = NULL, *r = NULL;
        size_t ln = 0, rn = 0;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp) {
                st = us_fail(e, US_EFORMAT, "%s: model.merges[%u]: \"%.60s\" is not two tokens", t->path, rank,
                             it->valuestring);
                break;
            }
            l = it->valuestring, ln = (size_t)(sp - l);
            r = sp + 1, rn = strlen(r);
            const char *sp2 = strchr(r, ' ');
            if (sp2) rn = (size_t)(sp2 - r);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            l = it->child->valuestring, ln = strlen(l);
            r = it->child->next->valuestring, rn = strlen(r);
        } else {
            st = us_fail(e, US_EFORMAT, "%s: model.merges[%u]: must be \"a b\" or [\"a\", \"b\"]", t->path, rank);
            break;
        }
        if (t->byte_level) {
            if (!bytelevel_to_raw(l, ln, &a) || !bytelevel_to_raw(r, rn, &b)) {
                rank++;
                continue;
            }
        } else {
            a.n = b.n = 0;
            if (!us_tbuf_add(&a, l, ln) || !us_tbuf_add(&b, r, rn)) {
                st = us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
                break;
            }
        }
        ab.n = 0;
        if (!us_tbuf_add(&ab, a.p ? a.p : "", a.n) || !us_tbuf_add(&ab, b.p ? b.p : "", b.n)) {
            st = us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
            break;
        }
        int32_t ia = vocab_find(t, a.p ? a.p : "", a.n), ib = vocab_find(t, b.p ? b.p : "", b.n);
        int32_t im = vocab_find(t, ab.p, ab.n);
        if (ia >= 0 && ib >= 0 && im >= 0) merge_insert(t, ia, ib, rank, im);
        rank++;
    }
    us_tbuf_free(&a);
    us_tbuf_free(&b);
    us_tbuf_free(&ab);
    return st;
}

static us_status load_added(us_tokenizer *t, const cJSON *list, size_t *cap, us_err *e) {
    if (!list || cJSON_IsNull(list)) return US_OK;
    if (!cJSON_IsArray(list)) return us_fail(e, US_EFORMAT, "%s: \"added_tokens\" must be a list", t->path);
    int n = cJSON_GetArraySize(list);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    if (!t->added) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
    for (int i = 0; i < 256; i++) t->trie_root[i] = -1;
    const cJSON *it;
    int k = 0;
    cJSON_ArrayForEach(it, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = jstr(it, "content");
        if (!cJSON_IsNumber(id) || !content || id->valuedouble < 0)
            return us_fail(e, US_EFORMAT, "%s: added_tokens[%d]: needs \"id\" and \"content\"", t->path, k);
        added_tok *a = &t->added[t->n_added];
        a->id = (int32_t)id->valuedouble;
        a->content = xstrdup(content);
        if (!a->content) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
        a->len = strlen(content);
        a->special = jbool(it, "special", false);
        a->lstrip = jbool(it, "lstrip", false);
        a->rstrip = jbool(it, "rstrip", false);
        a->single_word = jbool(it, "single_word", false);
        a->normalized = jbool(it, "normalized", !a->special);
        us_status st = set_token(t, a->id, content, a->len, cap, e);
        if (st) return st;
        t->special[a->id] = a->special;
        if (!vocab_insert(t, a->id)) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
        if (!trie_add(t, content, a->len, t->n_added)) return us_fail(e, US_ENOMEM, "%s: out of memory", t->path);
        t->n_added++;
        k++;
    }
    return US_OK;
}

static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return jstr(v, "content");
    return NULL;
}

us_status us_tokenizer_load_json(const char *json, size_t len, const char *config_json, size_t config_len,
                                 const char *name, us_tokenizer **out, us_err *e) {
    *out = NULL;
    byte_tables_init();
    us_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return us_fail(e, US_ENOMEM, "%s: out of memory", name);
    snprintf(t->path, sizeof t->path, "%s", name);
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    for (int i = 0; i < 256; i++) t->trie_root[i] = -1;
    us_status st = US_OK;
    cJSON *root = cJSON_ParseWithLength(json, len);
    cJSON *cfg = NULL;
    size_t cap = 0;
    if (!root) {
        st = json_error(name, json, len, e);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = us_fail(e, US_EFORMAT, "%s: top level must be a JSON object", name);
        goto done;
    }
    /* the pre-tokenizer and decoder decide whether the vocabulary is byte-level, so they go first */
    if ((st = load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), e))) goto done;
    if ((st = load_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), e))) goto done;
    if ((st = load_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), e))) goto done;
    for (int i = 0; i < t->n_decs; i++)
        if (t->decs[i].kind == DEC_BYTELEVEL) t->byte_level = true;
    if ((st = load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), &cap, e))) goto done;
    if ((st = load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &cap, e))) goto done;
    if ((st = load_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), e))) goto done;
    for (int i = 0; i < t->n_tmpl; i++)
        if (t->tmpl[i] >= t->vocab_size) {
            st = us_fail(e, US_EFORMAT, "%s: post_processor: id %d is outside the vocabulary", name, (int)t->tmpl[i]);
            goto done;
        }
    if (config_json) {
        cfg = cJSON_ParseWithLength(config_json, config_len);
        if (!cfg) {
            char cname[600];
            snprintf(cname, sizeof cname, "%s (tokenizer_config.json)", name);
            st = json_error(cname, config_json, config_len, e);
            goto done;
        }
        const char *ct = jstr(cfg, "chat_template");
        const cJSON *ctl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (!ct && cJSON_IsArray(ctl)) { /* [{name, template}]: take "default" */
            const cJSON *x;
            cJSON_ArrayForEach(x, ctl) {
                const char *nm = jstr(x, "name");
                if (nm && !strcmp(nm, "default")) ct = jstr(x, "template");
            }
        }
        if (ct) t->chat_template = xstrdup(ct);
        const char *b = config_token(cfg, "bos_token"), *s = config_token(cfg, "eos_token"),
                   *p = config_token(cfg, "pad_token");
        if (b) t->bos_token = xstrdup(b);
        if (s) t->eos_token = xstrdup(s);
        if (p) t->pad_token = xstrdup(p);
    }
    if (t->bos_token) t->bos_id = vocab_find(t, t->bos_token, strlen(t->bos_token));
    if (t->eos_token) t->eos_id = vocab_find(t, t->eos_token, strlen(t->eos_token));
    if (t->pad_token) t->pad_id = vocab_find(t, t->pad_token, strlen(t->pad_token));
    if (t->bos_id < 0 && !t->bos_token) /* no config: the template's leading special token */
        if (t->n_tmpl > 1 && t->tmpl[0] >= 0) t->bos_id = t->tmpl[0];
    if (t->eos_id < 0 && !t->eos_token) {
        static const char *guess[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"};
        for (size_t i = 0; i < sizeof guess / sizeof *guess && t->eos_id < 0; i++)
            t->eos_id = vocab_find(t, guess[i], strlen(guess[i]));
    }
    t->md = pcre2_match_data_create(4, NULL);
    t->cache_cap = 1 << 15;
    t->cache = calloc(t->cache_cap, sizeof *t->cache);
    if (!t->md || !t->cache) st = us_fail(e, US_ENOMEM, "%s: out of memory", name);
done:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (st) {
        us_tokenizer_free(t);
        return st;
    }
    *out = t;
    return US_OK;
}

us_status us_tokenizer_load(const char *path, us_tokenizer **out, us_err *e) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return us_fail(e, US_EIO, "%s: no such file or directory", path);
    char file[1024], cfgfile[1024];
    if (S_ISDIR(sb.st_mode)) {
        if (!us_path_join(file, sizeof file, path, "tokenizer.json") ||
            !us_path_join(cfgfile, sizeof cfgfile, path, "tokenizer_config.json"))
            return us_fail(e, US_EINVAL, "%s: path too long", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
        const char *slash = strrchr(path, '/');
        if (slash) {
            snprintf(cfgfile, sizeof cfgfile, "%.*s/tokenizer_config.json", (int)(slash - path), path);
        } else {
            snprintf(cfgfile, sizeof cfgfile, "tokenizer_config.json");
        }
    }
    char *json = NULL, *cfg = NULL;
    size_t len = 0, clen = 0;
    us_status st = us_read_file(file, &json, &len, e);
    if (st) return st;
    if (stat(cfgfile, &sb) == 0 && S_ISREG(sb.st_mode)) {
        us_err ce;
        if (us_read_file(cfgfile, &cfg, &clen, &ce)) cfg = NULL;
    }
    st = us_tokenizer_load_json(json, len, cfg, clen, file, out, e);
    free(json);
    free(cfg);
    return st;
}

void us_tokenizer_free(us_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->tokens);
    free(t->special);
    free(t->vocab.ids);
    free(t->vocab.hashes);
    free(t->merges.keys);
    free(t->merges.vals);
    for (int i = 0; i < t->n_nrms; i++) {
        free(t->nrms[i].a);
        free(t->nrms[i].b);
        pcre2_code_free(t->nrms[i].re);
    }
    free(t->nrms);
    for (int i = 0; i < t->n_pts; i++) {
        pcre2_code_free(t->pts[i].re);
        free(t->pts[i].replacement);
    }
    free(t->pts);
    for (int i = 0; i < t->n_decs; i++) {
        free(t->decs[i].a);
        free(t->decs[i].b);
    }
    free(t->decs);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie);
    free(t->tmpl);
    free(t->chat_template);
    free(t->bos_token);
    free(t->eos_token);
    free(t->pad_token);
    pcre2_match_data_free(t->md);
    us_tbuf_free(&t->sa);
    us_tbuf_free(&t->sb);
    free(t->syms);
    free(t->heap);
    if (t->cache)
        for (size_t i = 0; i < t->cache_cap; i++) {
            free(t->cache[i].key);
            free(t->cache[i].ids);
        }
    free(t->cache);
    free(t);
}

/* ---------------------------------------------------------------- id output */

typedef struct idvec {
    int32_t *v;
    size_t n, cap;
} idvec;

static bool ids_push(idvec *o, int32_t id) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v) return false;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
    return true;
}

/* ---------------------------------------------------------------- BPE */

static inline bool heap_less(const heap_ent *a, const heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(heap_ent *h, size_t *n, heap_ent x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_ent *best = &x;
        if (l < *n && heap_less(&h[l], best)) m = l, best = &h[l];
        if (r < *n && heap_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = x;
    return top;
}

static void try_pair(us_tokenizer *t, size_t *hn, int32_t i) {
    int32_t j = t->syms[i].next;
    if (j < 0) return;
    uint32_t rank;
    int32_t merged;
    if (merge_lookup(t, t->syms[i].id, t->syms[j].id, &rank, &merged))
        heap_push(t->heap, hn, (heap_ent){rank, (uint32_t)i, t->syms[i].id, t->syms[j].id, merged});
}

static us_status bpe_word(us_tokenizer *t, const char *w, size_t n, idvec *out, us_err *e) {
    if (n == 0) return US_OK;
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, w, n);
        if (id >= 0) return ids_push(out, id) ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
    }
    uint64_t h = 0;
    size_t slot = 0;
    bool cacheable = n < 256;
    if (cacheable) {
        h = us_str_hash(w, n);
        slot = (size_t)h & (t->cache_cap - 1);
        for (size_t probe = 0; probe < 8; probe++) {
            cache_entry *c = &t->cache[(slot + probe) & (t->cache_cap - 1)];
            if (!c->key) break;
            if (c->hash == h && c->klen == n && memcmp(c->key, w, n) == 0) {
                for (uint32_t k = 0; k < c->n; k++)
                    if (!ids_push(out, c->ids[k])) return us_fail(e, US_ENOMEM, "out of memory");
                return US_OK;
            }
        }
    }
    if (n + 1 > t->cap_syms) {
        size_t cap = t->cap_syms ? t->cap_syms : 256;
        while (cap < n + 1) cap *= 2;
        sym *s = realloc(t->syms, cap * sizeof *s);
        heap_ent *hp = realloc(t->heap, cap * 3 * sizeof *hp);
        if (s) t->syms = s;
        if (hp) t->heap = hp;
        if (!s || !hp) return us_fail(e, US_ENOMEM, "out of memory");
        t->cap_syms = cap;
    }
    /* initial symbols */
    int32_t ns = 0;
    const unsigned char *p = (const unsigned char *)w;
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        int32_t id;
        if (t->byte_level) {
            id = t->byte_id[p[i]];
        } else {
            uint32_t cp;
            k = p[i] < 0x80 ? 1 : us_utf8_decode(p + i, n - i, &cp);
            if (!k) k = 1;
            id = vocab_find(t, w + i, k);
        }
        t->syms[ns] = (sym){id, ns - 1, ns + 1, (uint32_t)i, (uint32_t)k};
        ns++;
        i += k;
    }
    t->syms[ns - 1].next = -1;
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) try_pair(t, &hn, i);
    /* heap capacity: each merge adds at most two entries; bounded by 2n overall plus initial n */
    while (hn) {
        heap_ent x = heap_pop(t->heap, &hn);
        sym *a = &t->syms[x.pos];
        if (a->len == 0 || a->id != x.left || a->next < 0) continue;
        sym *b = &t->syms[a->next];
        if (b->id != x.right) continue;
        a->id = x.merged;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) t->syms[b->next].prev = (int32_t)x.pos;
        if (hn + 2 > t->cap_syms * 3) { /* keep room: compact by rebuilding */
            hn = 0;
            for (int32_t i = 0; i >= 0; i = t->syms[i].next) try_pair(t, &hn, i);
        } else {
            if (a->prev >= 0) try_pair(t, &hn, a->prev);
            try_pair(t, &hn, (int32_t)x.pos);
        }
    }
    size_t first = out->n;
    bool last_unk = false;
    for (int32_t i = 0; i >= 0; i = t->syms[i].next) {
        sym *s = &t->syms[i];
        if (s->id >= 0) {
            if (!ids_push(out, s->id)) return us_fail(e, US_ENOMEM, "out of memory");
            last_unk = false;
            continue;
        }
        bool done = false;
        if (t->byte_fallback) {
            bool all = true;
            for (uint32_t k = 0; k < s->len; k++) all = all && t->byte_id[p[s->start + k]] >= 0;
            if (all) {
                for (uint32_t k = 0; k < s->len; k++)
                    if (!ids_push(out, t->byte_id[p[s->start + k]])) return us_fail(e, US_ENOMEM, "out of memory");
                done = true;
                last_unk = false;
            }
        }
        if (!done && t->unk_id >= 0) {
            if (!(t->fuse_unk && last_unk))
                if (!ids_push(out, t->unk_id)) return us_fail(e, US_ENOMEM, "out of memory");
            last_unk = true;
        }
    }
    if (cacheable) {
        cache_entry *c = &t->cache[slot];
        if (t->cache_n * 4 > t->cache_cap * 3) { /* full: start over */
            for (size_t i = 0; i < t->cache_cap; i++) {
                free(t->cache[i].key);
                free(t->cache[i].ids);
                t->cache[i] = (cache_entry){0};
            }
            t->cache_n = 0;
        }
        size_t probe = 0;
        while (probe < 8 && t->cache[(slot + probe) & (t->cache_cap - 1)].key) probe++;
        if (probe < 8) {
            c = &t->cache[(slot + probe) & (t->cache_cap - 1)];
            size_t cnt = out->n - first;
            c->key = malloc(n);
            c->ids = malloc((cnt ? cnt : 1) * sizeof(int32_t));
            if (c->key && c->ids) {
                memcpy(c->key, w, n);
                if (cnt) memcpy(c->ids, out->v + first, cnt * sizeof(int32_t)); /* out->v may be NULL */
                c->klen = (uint32_t)n;
                c->n = (uint32_t)cnt;
                c->hash = h;
                t->cache_n++;
            } else {
                free(c->key);
                free(c->ids);
                *c = (cache_entry){0};
            }
        }
    }
    return US_OK;
}

/* ---------------------------------------------------------------- normalization */

static bool replace_all(us_tokenizer *t, const nrm *x, const char *s, size_t n, us_tbuf *out) {
    spanlist l = {0};
    out->n = 0;
    if (re_find_all(t, x->re, s, n, &l) < 0) {
        free(l.v);
        return false;
    }
    size_t prev = 0, bl = strlen(x->b);
    bool ok = true;
    for (size_t i = 0; i < l.n && ok; i++) {
        ok = us_tbuf_add(out, s + prev, l.v[i].s - prev) && us_tbuf_add(out, x->b, bl);
        prev = l.v[i].e;
    }
    ok = ok && us_tbuf_add(out, s + prev, n - prev);
    free(l.v);
    return ok;
}

/* Normalizes s[0..n) into t->sa (returns pointer/len there). */
static us_status normalize(us_tokenizer *t, const char *s, size_t n, const char **res, size_t *rlen, us_err *e) {
    us_tbuf *cur = &t->sa, *tmp = &t->sb;
    cur->n = 0;
    if (!us_tbuf_add(cur, s, n)) return us_fail(e, US_ENOMEM, "out of memory");
    for (int i = 0; i < t->n_nrms; i++) {
        const nrm *x = &t->nrms[i];
        tmp->n = 0;
        bool ok = true;
        switch (x->kind) {
        case NRM_NFC:
            if (us_nfc_quick(cur->p, cur->n)) continue;
            ok = us_nfc_append(cur->p, cur->n, tmp);
            break;
        case NRM_PREPEND:
            if (cur->n == 0) continue;
            ok = us_tbuf_add(tmp, x->a, strlen(x->a)) && us_tbuf_add(tmp, cur->p, cur->n);
            break;
        case NRM_REPLACE:
            ok = replace_all(t, x, cur->p, cur->n, tmp);
            break;
        case NRM_LOWER:
            ok = us_tbuf_add(tmp, cur->p, cur->n);
            for (size_t k = 0; ok && k < tmp->n; k++)
                if (tmp->p[k] >= 'A' && tmp->p[k] <= 'Z') tmp->p[k] = (char)(tmp->p[k] + 32);
            break;
        case NRM_STRIP: {
            size_t a = 0, b = cur->n;
            const unsigned char *p = (const unsigned char *)cur->p;
            while (x->left && a < b) {
                uint32_t cp;
                size_t k = us_utf8_decode(p + a, b - a, &cp);
                if (!k || !us_is_white_space(cp)) break;
                a += k;
            }
            while (x->right && b > a) {
                size_t st = b - 1;
                while (st > a && (p[st] & 0xC0) == 0x80) st--;
                uint32_t cp;
                size_t k = us_utf8_decode(p + st, b - st, &cp);
                if (!k || !us_is_white_space(cp)) break;
                b = st;
            }
            ok = us_tbuf_add(tmp, cur->p + a, b - a);
            break;
        }
        }
        if (!ok) return us_fail(e, US_ENOMEM, "out of memory");
        us_tbuf sw = *cur;
        *cur = *tmp;
        *tmp = sw;
    }
    /* keep the result in t->sa */
    if (cur != &t->sa) {
        us_tbuf sw = t->sa;
        t->sa = *cur;
        *cur = sw;
    }
    *res = t->sa.p ? t->sa.p : "";
    *rlen = t->sa.n;
    return US_OK;
}

/* ---------------------------------------------------------------- pre-tokenization */

/* Splits each span of `in` (over buffer s) by a regex with the given behavior into `out`, the way
 * the Rust crate does: the span becomes alternating gaps and matches ("hits" are the matches, or
 * the gaps when inverted), then the behavior decides what joins what. */
typedef struct part {
    size_t s, e;
    bool hit;
} part;

static us_status split_spans(us_tokenizer *t, const pretok *x, const char *s, const spanlist *in, spanlist *out,
                             us_err *e) {
    spanlist m = {0};
    part *parts = NULL;
    size_t cap = 0;
    out->n = 0;
    us_status st = US_OK;
    for (size_t i = 0; i < in->n && !st; i++) {
        size_t base = in->v[i].s, len = in->v[i].e - base;
        int rc = re_find_all(t, x->re, s + base, len, &m);
        if (rc < 0) {
            st = us_fail(e, US_EINVAL, "regex match failed (%d)", rc);
            break;
        }
        if (2 * m.n + 1 > cap) {
            cap = 2 * m.n + 1;
            part *np = realloc(parts, cap * sizeof *np);
            if (!np) {
                st = us_fail(e, US_ENOMEM, "out of memory");
                break;
            }
            parts = np;
        }
        size_t np = 0, prev = 0;
        for (size_t k = 0; k < m.n; k++) {
            if (m.v[k].s > prev) parts[np++] = (part){base + prev, base + m.v[k].s, x->invert};
            parts[np++] = (part){base + m.v[k].s, base + m.v[k].e, !x->invert};
            prev = m.v[k].e;
        }
        if (len > prev) parts[np++] = (part){base + prev, base + len, x->invert};
        bool ok = true, prev_hit = false;
        switch (x->behavior) {
        case BH_ISOLATED:
            for (size_t k = 0; k < np && ok; k++) ok = spans_push(out, parts[k].s, parts[k].e);
            break;
        case BH_REMOVED:
            for (size_t k = 0; k < np && ok; k++)
                if (!parts[k].hit) ok = spans_push(out, parts[k].s, parts[k].e);
            break;
        case BH_MERGED_PREV: {
            size_t first = out->n;
            for (size_t k = 0; k < np && ok; k++) {
                if (parts[k].hit && !prev_hit && out->n > first) out->v[out->n - 1].e = parts[k].e;
                else ok = spans_push(out, parts[k].s, parts[k].e);
                prev_hit = parts[k].hit;
            }
            break;
        }
        case BH_MERGED_NEXT: {
            /* walk backwards, then reverse what was added */
            size_t first = out->n;
            for (size_t k = np; k-- > 0 && ok;) {
                if (parts[k].hit && !prev_hit && out->n > first) out->v[out->n - 1].s = parts[k].s;
                else ok = spans_push(out, parts[k].s, parts[k].e);
                prev_hit = parts[k].hit;
            }
            for (size_t a = first, b = out->n; ok && b > a + 1; a++, b--) {
                span tmp = out->v[a];
                out->v[a] = out->v[b - 1];
                out->v[b - 1] = tmp;
            }
            break;
        }
        case BH_CONTIGUOUS: {
            size_t first = out->n;
            for (size_t k = 0; k < np && ok; k++) {
                if (parts[k].hit == prev_hit && out->n > first) out->v[out->n - 1].e = parts[k].e;
                else ok = spans_push(out, parts[k].s, parts[k].e);
                prev_hit = parts[k].hit;
            }
            break;
        }
        }
        if (!ok) st = us_fail(e, US_ENOMEM, "out of memory");
    }
    free(parts);
    free(m.v);
    return st;
}

/* Runs the pre-tokenizers over section text s (which lives in t->sa), then BPE on each piece. */
static us_status pretok_and_model(us_tokenizer *t, const char *s0, size_t n0, int section, idvec *out, us_err *e) {
    us_status st = US_OK;
    spanlist a = {0}, b = {0};
    us_tbuf buf = {0}; /* owns the text when a pre-tokenizer rewrites it */
    const char *s = s0;
    if (!spans_push(&a, 0, n0)) return us_fail(e, US_ENOMEM, "out of memory");
    for (int i = 0; i < t->n_pts && !st; i++) {
        const pretok *x = &t->pts[i];
        if (x->kind == PT_SPLIT) {
            st = split_spans(t, x, s, &a, &b, e);
            spanlist sw = a;
            a = b;
            b = sw;
        } else if (x->kind == PT_BYTELEVEL) {
            if (!x->add_prefix_space) continue;
            us_tbuf nb = {0};
            b.n = 0;
            for (size_t k = 0; k < a.n && !st; k++) {
                size_t ps = nb.n;
                bool ok = (s[a.v[k].s] == ' ' || us_tbuf_addc(&nb, ' ')) &&
                          us_tbuf_add(&nb, s + a.v[k].s, a.v[k].e - a.v[k].s) && spans_push(&b, ps, nb.n);
                if (!ok) st = us_fail(e, US_ENOMEM, "out of memory");
            }
            us_tbuf_free(&buf);
            buf = nb;
            s = buf.p ? buf.p : "";
            spanlist sw = a;
            a = b;
            b = sw;
        } else { /* Metaspace */
            us_tbuf nb = {0};
            b.n = 0;
            size_t rl = strlen(x->replacement);
            for (size_t k = 0; k < a.n && !st; k++) {
                size_t ps = nb.n;
                const char *p = s + a.v[k].s;
                size_t len = a.v[k].e - a.v[k].s;
                bool ok = true;
                bool prepend = x->scheme == PREPEND_ALWAYS || (x->scheme == PREPEND_FIRST && section == 0 && k == 0);
                bool starts = (len > 0 && p[0] == ' ') || (len >= rl && memcmp(p, x->replacement, rl) == 0);
                if (prepend && !starts) ok = us_tbuf_add(&nb, x->replacement, rl);
                for (size_t c = 0; ok && c < len; c++)
                    ok = p[c] == ' ' ? us_tbuf_add(&nb, x->replacement, rl) : us_tbuf_addc(&nb, p[c]);
                if (!ok) {
                    st = us_fail(e, US_ENOMEM, "out of memory");
                    break;
                }
                if (!x->split) {
                    if (nb.n > ps && !spans_push(&b, ps, nb.n)) st = us_fail(e, US_ENOMEM, "out of memory");
                    continue;
                }
                /* split before each replacement (MergedWithNext) */
                size_t start = ps;
                for (size_t c = ps + 1; c + rl <= nb.n; c++)
                    if (memcmp(nb.p + c, x->replacement, rl) == 0) {
                        if (!spans_push(&b, start, c)) st = us_fail(e, US_ENOMEM, "out of memory");
                        start = c;
                    }
                if (nb.n > start && !spans_push(&b, start, nb.n)) st = us_fail(e, US_ENOMEM, "out of memory");
            }
            us_tbuf_free(&buf);
            buf = nb;
            s = buf.p ? buf.p : "";
            spanlist sw = a;
            a = b;
            b = sw;
        }
    }
    for (size_t k = 0; k < a.n && !st; k++) st = bpe_word(t, s + a.v[k].s, a.v[k].e - a.v[k].s, out, e);
    free(a.v);
    free(b.v);
    us_tbuf_free(&buf);
    return st;
}

/* ---------------------------------------------------------------- encode */

static bool is_word_byte(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

/* Longest added token starting at i, or -1. */
static int added_at(const us_tokenizer *t, const unsigned char *p, size_t n, size_t i) {
    int32_t node = t->trie_root[p[i]];
    int best = -1;
    size_t j = i + 1;
    while (node >= 0) {
        if (t->trie[node].added >= 0) best = t->trie[node].added;
        if (j >= n) break;
        int32_t c = t->trie[node].first_child;
        while (c >= 0 && t->trie[c].byte != p[j]) c = t->trie[c].sibling;
        node = c;
        j++;
    }
    return best;
}

static size_t ws_back(const char *s, size_t lo, size_t hi) { /* start of trailing white space in [lo,hi) */
    const unsigned char *p = (const unsigned char *)s;
    while (hi > lo) {
        size_t st = hi - 1;
        while (st > lo && (p[st] & 0xC0) == 0x80) st--;
        uint32_t cp;
        size_t k = us_utf8_decode(p + st, hi - st, &cp);
        if (!k || !us_is_white_space(cp)) break;
        hi = st;
    }
    return hi;
}

static size_t ws_fwd(const char *s, size_t lo, size_t hi) {
    const unsigned char *p = (const unsigned char *)s;
    while (lo < hi) {
        uint32_t cp;
        size_t k = us_utf8_decode(p + lo, hi - lo, &cp);
        if (!k || !us_is_white_space(cp)) break;
        lo += k;
    }
    return lo;
}

static us_status encode_section(us_tokenizer *t, const char *s, size_t n, int section, idvec *out, us_err *e) {
    if (n == 0) return US_OK;
    const char *ns = NULL;
    size_t nn = 0;
    us_status st = normalize(t, s, n, &ns, &nn, e);
    if (st || nn == 0) return st;
    /* normalize() leaves the text in t->sa, which the pre-tokenizers only read */
    us_tbuf copy = {0};
    if (!us_tbuf_add(&copy, ns, nn)) return us_fail(e, US_ENOMEM, "out of memory");
    st = pretok_and_model(t, copy.p, copy.n, section, out, e);
    us_tbuf_free(&copy);
    return st;
}

us_status us_tokenizer_encode(us_tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                              size_t *n, us_err *e) {
    *ids = NULL;
    *n = 0;
    size_t bad;
    if (!text && len) return us_fail(e, US_EINVAL, "encode: NULL text");
    if (!us_utf8_valid(text, len, &bad))
        return us_fail(e, US_EINVAL, "encode: invalid UTF-8 at byte %zu", bad);
    idvec out = {0};
    us_status st = US_OK;
    size_t tmpl_seq = 0;
    if (add_special && t->n_tmpl) {
        for (; tmpl_seq < (size_t)t->n_tmpl && t->tmpl[tmpl_seq] != -2; tmpl_seq++)
            if (!ids_push(&out, t->tmpl[tmpl_seq])) st = us_fail(e, US_ENOMEM, "out of memory");
    }
    const unsigned char *p = (const unsigned char *)text;
    size_t sec_start = 0, i = 0;
    int section = 0;
    size_t skip_ws_from = SIZE_MAX; /* rstrip of the previous added token */
    while (i < len && !st) {
        int a = t->n_added ? added_at(t, p, len, i) : -1;
        if (a >= 0) {
            const added_tok *at = &t->added[a];
            size_t end = i + at->len;
            if (at->single_word && ((i > 0 && is_word_byte(p[i - 1])) || (end < len && is_word_byte(p[end])))) a = -1;
            if (a >= 0) {
                size_t sec_end = i;
                if (at->lstrip) sec_end = ws_back(text, sec_start, sec_end);
                if (skip_ws_from == sec_start) sec_start = ws_fwd(text, sec_start, sec_end);
                if (sec_end > sec_start) st = encode_section(t, text + sec_start, sec_end - sec_start, section, &out, e);
                section = 1; /* only the text at offset 0 counts as "first" */
                if (!st && !ids_push(&out, at->id)) st = us_fail(e, US_ENOMEM, "out of memory");
                i = end;
                sec_start = end;
                skip_ws_from = at->rstrip ? end : SIZE_MAX;
                continue;
            }
        }
        i++;
    }
    if (!st) {
        if (skip_ws_from == sec_start) sec_start = ws_fwd(text, sec_start, len);
        if (len > sec_start) st = encode_section(t, text + sec_start, len - sec_start, section, &out, e);
    }
    if (!st && add_special && t->n_tmpl && tmpl_seq < (size_t)t->n_tmpl)
        for (size_t k = tmpl_seq + 1; k < (size_t)t->n_tmpl && !st; k++)
            if (t->tmpl[k] != -2 && !ids_push(&out, t->tmpl[k])) st = us_fail(e, US_ENOMEM, "out of memory");
    if (st) {
        free(out.v);
        return st;
    }
    if (!out.v) out.v = malloc(sizeof(int32_t));
    if (!out.v) return us_fail(e, US_ENOMEM, "out of memory");
    *ids = out.v;
    *n = out.n;
    return US_OK;
}

/* ---------------------------------------------------------------- decode */

typedef struct strlist {
    us_tbuf *v;
    size_t n;
} strlist;

static void strlist_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) us_tbuf_free(&l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static bool str_replace(us_tbuf *out, const char *s, size_t n, const char *pat, const char *rep) {
    size_t pl = strlen(pat), rl = strlen(rep);
    out->n = 0;
    if (!us_tbuf_reserve(out, n)) return false;
    if (!pl) return us_tbuf_add(out, s, n);
    size_t i = 0;
    while (i < n) {
        if (i + pl <= n && memcmp(s + i, pat, pl) == 0) {
            if (!us_tbuf_add(out, rep, rl)) return false;
            i += pl;
        } else {
            if (!us_tbuf_addc(out, s[i])) return false;
            i++;
        }
    }
    if (!out->p) return us_tbuf_add(out, "", 0);
    return true;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static bool apply_decoder(const decoder *d, strlist *l) {
    switch (d->kind) {
    case DEC_BYTELEVEL: /* vocabulary already holds raw bytes: join, then lossy UTF-8 */
    case DEC_FUSE: {
        us_tbuf all = {0};
        for (size_t i = 0; i < l->n; i++)
            if (!us_tbuf_add(&all, l->v[i].p ? l->v[i].p : "", l->v[i].n)) return false;
        if (!all.p && !us_tbuf_add(&all, "", 0)) return false;
        if (d->kind == DEC_BYTELEVEL) {
            us_tbuf lossy = {0};
            if (!utf8_lossy_append(&lossy, all.p, all.n) || !us_tbuf_add(&lossy, "", 0)) {
                us_tbuf_free(&all);
                return false;
            }
            us_tbuf_free(&all);
            all = lossy;
        }
        for (size_t i = 0; i < l->n; i++) us_tbuf_free(&l->v[i]);
        l->v[0] = all;
        l->n = 1;
        return true;
    }
    case DEC_REPLACE:
    case DEC_METASPACE:
        for (size_t i = 0; i < l->n; i++) {
            us_tbuf o = {0};
            const char *pat = d->a, *rep = d->kind == DEC_REPLACE ? d->b : " ";
            if (!str_replace(&o, l->v[i].p ? l->v[i].p : "", l->v[i].n, pat, rep)) return false;
            if (d->kind == DEC_METASPACE && i == 0 && d->scheme != PREPEND_NEVER && o.n && o.p[0] == ' ') {
                memmove(o.p, o.p + 1, o.n);
                o.n--;
            }
            us_tbuf_free(&l->v[i]);
            l->v[i] = o;
        }
        return true;
    case DEC_STRIP:
        for (size_t i = 0; i < l->n; i++) {
            us_tbuf *b = &l->v[i];
            size_t cl = strlen(d->a), a0 = 0, e0 = b->n;
            for (int k = 0; k < d->start && cl && a0 + cl <= e0 && memcmp(b->p + a0, d->a, cl) == 0; k++) a0 += cl;
            for (int k = 0; k < d->stop && cl && e0 >= a0 + cl && memcmp(b->p + e0 - cl, d->a, cl) == 0; k++) e0 -= cl;
            if (b->p) {
                memmove(b->p, b->p + a0, e0 - a0);
                b->n = e0 - a0;
                b->p[b->n] = 0;
            }
        }
        return true;
    case DEC_BYTEFALLBACK: {
        strlist o = {calloc(l->n + 1, sizeof(us_tbuf)), 0};
        if (!o.v) return false;
        us_tbuf bytes = {0};
        size_t nbytes = 0;
        bool ok = true;
        for (size_t i = 0; i <= l->n && ok; i++) {
            const us_tbuf *b = i < l->n ? &l->v[i] : NULL;
            int hv = -1;
            if (b && b->n == 6 && memcmp(b->p, "<0x", 3) == 0 && b->p[5] == '>') {
                int h1 = hexval(b->p[3]), h2 = hexval(b->p[4]);
                if (h1 >= 0 && h2 >= 0) hv = h1 * 16 + h2;
            }
            if (hv >= 0) {
                char c = (char)hv;
                ok = us_tbuf_add(&bytes, &c, 1);
                nbytes++;
                continue;
            }
            if (nbytes) {
                us_tbuf *dst = &o.v[o.n++];
                if (us_utf8_valid(bytes.p, bytes.n, NULL)) ok = us_tbuf_add(dst, bytes.p, bytes.n);
                else
                    for (size_t k = 0; k < nbytes && ok; k++) ok = us_tbuf_add(dst, "\xEF\xBF\xBD", 3);
                bytes.n = 0;
                nbytes = 0;
            }
            if (b && ok) ok = us_tbuf_add(&o.v[o.n++], b->p ? b->p : "", b->n);
        }
        us_tbuf_free(&bytes);
        strlist_free(l);
        *l = o;
        return ok;
    }
    }
    return true;
}

us_status us_tokenizer_decode(const us_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **text,
                              size_t *len, us_err *e) {
    *text = NULL;
    if (len) *len = 0;
    strlist l = {calloc(n + 1, sizeof(us_tbuf)), 0};
    if (!l.v) return us_fail(e, US_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t sl;
        const char *s = tok_str(t, ids[i], &sl);
        if (!s) {
            strlist_free(&l);
            return us_fail(e, US_EINVAL, "decode: id %d at position %zu is not in the vocabulary (size %d)",
                           (int)ids[i], i, (int)t->vocab_size);
        }
        if (skip_special && t->special[ids[i]]) continue;
        if (!us_tbuf_add(&l.v[l.n++], s, sl)) {
            strlist_free(&l);
            return us_fail(e, US_ENOMEM, "out of memory");
        }
    }
    bool ok = true;
    for (int i = 0; i < t->n_decs && ok; i++) ok = apply_decoder(&t->decs[i], &l);
    us_tbuf joined = {0};
    for (size_t i = 0; i < l.n && ok; i++) {
        if (!t->has_decoder && i > 0) ok = us_tbuf_addc(&joined, ' ');
        ok = ok && utf8_lossy_append(&joined, l.v[i].p ? l.v[i].p : "", l.v[i].n);
    }
    ok = ok && us_tbuf_add(&joined, "", 0);
    strlist_free(&l);
    if (!ok) {
        us_tbuf_free(&joined);
        return us_fail(e, US_ENOMEM, "out of memory");
    }
    *text = joined.p;
    if (len) *len = joined.n;
    return US_OK;
}

/* ---------------------------------------------------------------- accessors */

int32_t us_tokenizer_token_id(const us_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int32_t id = vocab_find(t, token, n);
    if (id < 0 && t->byte_level) {
        us_tbuf raw = {0};
        if (bytelevel_to_raw(token, n, &raw)) id = vocab_find(t, raw.p ? raw.p : "", raw.n);
        us_tbuf_free(&raw);
    }
    return id;
}

const char *us_tokenizer_id_to_token(const us_tokenizer *t, int32_t id, size_t *len) { return tok_str(t, id, len); }
bool us_tokenizer_is_special(const us_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->vocab_size && t->special[id];
}
int32_t us_tokenizer_bos_id(const us_tokenizer *t) { return t->bos_id; }
int32_t us_tokenizer_eos_id(const us_tokenizer *t) { return t->eos_id; }
int32_t us_tokenizer_pad_id(const us_tokenizer *t) { return t->pad_id; }
int32_t us_tokenizer_vocab_size(const us_tokenizer *t) { return t->vocab_size; }
const char *us_tokenizer_chat_template(const us_tokenizer *t) { return t->chat_template; }
const char *us_tokenizer_bos_token(const us_tokenizer *t) { return t->bos_token; }
const char *us_tokenizer_eos_token(const us_tokenizer *t) { return t->eos_token; }
const char *us_tokenizer_path(const us_tokenizer *t) { return t->path; }
