/* jsonutil.h — small cJSON helpers shared by the readers in src/io and src/data.
 *
 * us_json_parse parses exactly `len` bytes (no NUL needed), rejects text that is not valid UTF-8
 * (or holds a NUL byte) and anything but whitespace after the value, and reports a syntax error as "WHERE: malformed JSON at line L, column C". The
 * us_json_* getters turn a value into a C number with range checks and name the key in errors. */
#ifndef US_JSONUTIL_H
#define US_JSONUTIL_H

#include <cJSON.h>

#include "core/common.h"

us_status us_json_parse(const char *text, size_t len, const char *where, cJSON **out, us_err *e);

/* First key that appears twice in one object anywhere in v, or NULL. Readers differ on which
 * copy wins (Python's json keeps the last, cJSON finds the first), so data readers refuse them. */
const char *us_json_duplicate_key(const cJSON *v);

/* A JSON type's name for messages: "string", "number", "null", ... */
const char *us_json_type_name(const cJSON *v);

/* True when v is a number holding an exact integer in [lo, hi]. */
bool us_json_int_in(const cJSON *v, int64_t lo, int64_t hi, int64_t *out);

#endif
