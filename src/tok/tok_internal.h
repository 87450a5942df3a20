/* tok_internal.h — pieces shared by the tokenizer's source files (not a public header).
 *
 * A growable byte buffer, a string hash, and NFC normalization. Kept small on purpose: the
 * tokenizer's data structures live in tokenizer.c, next to the only code that uses them. */
#ifndef US_TOK_INTERNAL_H
#define US_TOK_INTERNAL_H

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct us_tbuf {
    char *p;
    size_t n, cap;
} us_tbuf;

/* Ensure room for extra more bytes (+1 for a NUL); false on allocation failure. */
static inline bool us_tbuf_reserve(us_tbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static inline bool us_tbuf_add(us_tbuf *b, const void *s, size_t n) {
    if (!us_tbuf_reserve(b, n)) return false;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static inline bool us_tbuf_addc(us_tbuf *b, char c) { return us_tbuf_add(b, &c, 1); }

static inline void us_tbuf_free(us_tbuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static inline uint64_t us_str_hash(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ (v * 0xFF51AFD7ED558CCDull)) * 0x9FB21C651E98DF25ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    h = (h ^ (v * 0xFF51AFD7ED558CCDull)) * 0x9FB21C651E98DF25ull;
    h ^= h >> 32;
    return h;
}

/* Appends the NFC form of s[0..len) (valid UTF-8) to out. */
bool us_nfc_append(const char *s, size_t len, us_tbuf *out);
/* True when s is certainly already NFC (fast scan: every code point below U+0300). */
bool us_nfc_quick(const char *s, size_t len);

/* Unicode White_Space. */
static inline bool us_is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

#endif
