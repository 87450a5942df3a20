/* jsonutil.c — strict parsing wrapper around cJSON with line/column error positions, and the
 * exact-integer test that every reader uses (JSON numbers arrive as doubles). */
#include "io/jsonutil.h"

#include <math.h>

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

us_status us_json_parse(const char *text, size_t len, const char *where, cJSON **out, us_err *e) {
    *out = NULL;
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
