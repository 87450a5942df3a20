/* chat.h — rendering tokenizer_config.json's chat_template (Jinja) for chat datasets and the CLI.
 *
 * The template is rendered by a Jinja-subset interpreter (tok/jinja.h) as transformers'
 * apply_chat_template renders it; a template using something outside that subset falls back to
 * the built-in C renderer of the family it is recognised as (by its marker tokens; see chat.c).
 * A built-in family can be forced by name, e.g. when a tokenizer ships no template. */
#ifndef US_CHAT_H
#define US_CHAT_H

#include <cJSON.h>

#include "core/common.h"
#include "tok/tokenizer.h"

typedef struct us_chat_template us_chat_template;

/* Compiles template source. bos/eos (may be NULL) become bos_token/eos_token. */
us_status us_chat_template_compile(const char *src, const char *bos, const char *eos, us_chat_template **out,
                                   us_err *e);
/* The tokenizer's own template, or a forced one: a built-in name (llama3, chatml, qwen, gemma,
 * llama2, mistral) or a path to a file holding a template. */
us_status us_chat_template_for(const us_tokenizer *tok, const char *force, us_chat_template **out, us_err *e);
/* Renders messages (a JSON array of {"role", "content", ...}); *out is malloc'd, NUL-terminated. */
us_status us_chat_render(const us_chat_template *ct, const cJSON *messages, bool add_generation_prompt, char **out,
                         size_t *len, us_err *e);
void us_chat_template_free(us_chat_template *ct);
/* Which renderer the last us_chat_render used (before any, the one it will try first): "jinja",
 * "built-in NAME", or "built-in NAME (template not interpreted: REASON)" after a fallback. */
const char *us_chat_template_engine(const us_chat_template *ct);
/* Names of the built-in templates, NULL-terminated. */
extern const char *const us_chat_builtin_names[];

#endif
