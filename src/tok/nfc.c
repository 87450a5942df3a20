/* nfc.c — Unicode Normalization Form C, for tokenizers whose normalizer is {"type": "NFC"}
 * (Qwen2/3).
 *
 * Design: the textbook three passes over code points — full canonical decomposition (table
 * lookup, Hangul by arithmetic), canonical reordering of combining-mark runs (stable insertion
 * sort by combining class), then canonical composition against the last starter, with the
 * "blocked" rule checked through the largest combining class seen since that starter. The tables
 * (nfc_tables.h) are generated from the Unicode data that ships with perl by
 * scripts/gen_nfc_tables.pl; lookups are binary searches. Text below U+0300 is already NFC, which
 * us_nfc_quick() detects so that most ASCII/Latin text skips all of this. */
#include <stdlib.h>

#include "tok/nfc_tables.h"
#include "tok/tok_internal.h"
#include "tok/tokenizer.h"

#define NCCC (sizeof nfc_ccc / sizeof nfc_ccc[0])
#define NDEC (sizeof nfc_dec_idx / sizeof nfc_dec_idx[0])
#define NCOMP (sizeof nfc_comp / sizeof nfc_comp[0])

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28 };
enum { NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t c) {
    if (c < 0x300) return 0;
    size_t lo = 0, hi = NCCC;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (nfc_ccc[m][0] == c) return (int)nfc_ccc[m][1];
        if (nfc_ccc[m][0] < c) lo = m + 1;
        else hi = m;
    }
    return 0;
}

static const uint32_t *dec_of(uint32_t c, size_t *n) {
    if (c < 0xC0) return NULL;
    size_t lo = 0, hi = NDEC;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (nfc_dec_idx[m][0] == c) {
            *n = nfc_dec_idx[m][2];
            return &nfc_dec_cps[nfc_dec_idx[m][1]];
        }
        if (nfc_dec_idx[m][0] < c) lo = m + 1;
        else hi = m;
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = NCOMP;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (nfc_comp[m][0] == a && nfc_comp[m][1] == b) return nfc_comp[m][2];
        if (nfc_comp[m][0] < a || (nfc_comp[m][0] == a && nfc_comp[m][1] < b)) lo = m + 1;
        else hi = m;
    }
    return 0;
}

bool us_nfc_quick(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] >= 0xCC) return false;
    return true;
}

bool us_nfc_append(const char *s, size_t len, us_tbuf *out) {
    uint32_t *cp = malloc((len * 4 + 4) * sizeof *cp); /* a code point decomposes into at most 4... or 18 */
    size_t cap = len * 4 + 4, n = 0;
    if (!cp) return false;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = us_utf8_decode(p + i, len - i, &c);
        if (!k) c = 0xFFFD, k = 1;
        i += k;
        size_t dn = 0;
        const uint32_t *d = NULL;
        uint32_t h[3];
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t si = c - SBASE;
            h[0] = LBASE + si / NCOUNT;
            h[1] = VBASE + (si % NCOUNT) / TCOUNT;
            h[2] = TBASE + si % TCOUNT;
            dn = h[2] == TBASE ? 2 : 3;
            d = h;
        } else {
            d = dec_of(c, &dn);
        }
        if (!d) d = &c, dn = 1;
        if (n + dn > cap) {
            cap = (n + dn) * 2;
            uint32_t *np = realloc(cp, cap * sizeof *cp);
            if (!np) {
                free(cp);
                return false;
            }
            cp = np;
        }
        for (size_t j = 0; j < dn; j++) cp[n++] = d[j];
    }
    /* canonical ordering: insertion sort inside runs of non-starters */
    for (size_t i = 1; i < n; i++) {
        int ci = ccc_of(cp[i]);
        if (!ci) continue;
        size_t j = i;
        uint32_t x = cp[i];
        while (j > 0) {
            int cj = ccc_of(cp[j - 1]);
            if (cj <= ci) break;
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = x;
    }
    /* composition */
    size_t w = 0, starter = SIZE_MAX;
    int last_cc = -1; /* ccc of the last char kept after the starter; -1 when none */
    for (size_t i = 0; i < n; i++) {
        uint32_t c = cp[i];
        int cc = ccc_of(c);
        if (starter != SIZE_MAX && (last_cc == -1 || (last_cc != 0 && last_cc < cc))) {
            uint32_t comp = compose(cp[starter], c);
            if (comp) {
                cp[starter] = comp;
                continue;
            }
        }
        cp[w++] = c;
        if (cc == 0) starter = w - 1, last_cc = -1;
        else last_cc = cc;
    }
    bool ok = us_tbuf_reserve(out, w * 4);
    for (size_t i = 0; ok && i < w; i++) {
        char b[4];
        size_t k = us_utf8_encode(cp[i], b);
        ok = us_tbuf_add(out, b, k);
    }
    free(cp);
    return ok;
}
