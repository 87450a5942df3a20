/* jinja.h — a small interpreter for the subset of Jinja that Hugging Face chat templates use.
 *
 * The template is compiled once (lexer + parser into an AST kept in an arena) and rendered with a
 * context given as a JSON object (messages, bos_token, add_generation_prompt, tools, ...). The
 * environment is the one transformers' apply_chat_template uses: trim_blocks and lstrip_blocks on,
 * no autoescape, `tojson` as json.dumps(ensure_ascii=False), raise_exception() and strftime_now().
 *
 * Errors are values: a construct outside the subset is US_EUNSUPPORTED (a caller may fall back to
 * another renderer), a syntax error is US_EFORMAT, and an error the template raises or an invalid
 * operation at render time is US_EINVAL; every message names the template's source and the
 * line:column at fault. Any text is safe to compile and render: nesting depth, loop iterations,
 * memory and output size are bounded. */
#ifndef US_JINJA_H
#define US_JINJA_H

#include <cJSON.h>

#include "core/common.h"

typedef struct us_jinja us_jinja;

/* Compiles src; name (e.g. "path/tokenizer_config.json") is used in error messages. */
us_status us_jinja_compile(const char *src, const char *name, us_jinja **out, us_err *e);
/* Renders with the variables of ctx (a JSON object; NULL for none). *out is malloc'd and
 * NUL-terminated; *len (when not NULL) is its length. */
us_status us_jinja_render(const us_jinja *t, const cJSON *ctx, char **out, size_t *len, us_err *e);
void us_jinja_free(us_jinja *t);

#endif
