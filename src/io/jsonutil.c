/* jsonutil.c — strict parsing wrapper around cJSON with line/column error positions, and the
 * exact-integer test that every reader uses (JSON numbers arrive as doubles). */
#include "io/jsonutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void line_col(const char *text, size_t off, size_t *line, size_t *col) {
    size_t l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/* Length of the valid UTF-8 prefix of s (RFC 3629: no overlongs, no surrogates, <= U+10FFFF);
 * NUL bytes count as invalid too (JSON text never holds a raw NUL). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c && c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07, min = 0x10000;
        else return i;
        if (i + n > len) return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += n;
    }
    return i;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

const char *us_json_duplicate_key(const cJSON *v) {
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
    size_t n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        const char *d = us_json_duplicate_key(c);
        if (d) return d;
        n++;
    }
    if (!cJSON_IsObject(v) || n < 2) return NULL;
    const cJSON **keys = malloc(n * sizeof *keys);
    if (!keys) return NULL;
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next) keys[i++] = c;
    qsort(keys, n, sizeof *keys, cmp_key);
    const char *dup = NULL;
    for (i = 1; i < n && !dup; i++)
        if (strcmp(keys[i - 1]->string, keys[i]->string) == 0) dup = keys[i]->string;
    free(keys);
    return dup;
}

us_status us_json_parse(const char *text, size_t len, const char *where, cJSON **out, us_err *e) {
    *out = NULL;
    size_t valid = utf8_valid_prefix((const unsigned char *)text, len);
    if (valid < len) {
        size_t line, col;
        line_col(text, valid, &line, &col);
        return us_fail(e, US_EFORMAT, "%s: %s at line %zu, column %zu (byte %zu): JSON text must be UTF-8", where,
                       text[valid] ? "invalid UTF-8" : "NUL byte", line, col, valid);
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t line, col;
    if (!root) {
        size_t off = (end && end >= text && (size_t)(end - text) <= len) ? (size_t)(end - text) : 0;
        line_col(text, off, &line, &col);
        if (len == 0) return us_fail(e, US_EFORMAT, "%s: malformed JSON: the text is empty", where);
        return us_fail(e, US_EFORMAT, "%s: malformed JSON at line %zu, column %zu", where, line, col);
    }
    size_t off = end ? (size_t)(end - text) : len;
    while (off < len && is_ws(text[off])) off++;
    if (off < len) {
        line_col(text, off, &line, &col);
        cJSON_Delete(root);
        return us_fail(e, US_EFORMAT, "%s: malformed JSON: unexpected data after the value at line %zu, column %zu",
                       where, line, col);
    }
    *out = root;
    return US_OK;
}

const char *us_json_type_name(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

bool us_json_int_in(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d)) return false;
    if (d < -9007199254740992.0 || d > 9007199254740992.0) return false; /* beyond exact doubles */
    int64_t i = (int64_t)d;
    if (i < lo || i > hi) return false;
    if (out) *out = i;
    return true;
}
