/* chat.c — placeholder, replaced by the Jinja-subset interpreter. */
#include "tok/chat.h"
const char *const us_chat_builtin_names[] = {NULL};
us_status us_chat_template_compile(const char *src, const char *bos, const char *eos, us_chat_template **out,
                                   us_err *e) { *out = NULL; return us_fail(e, US_EUNSUPPORTED, "chat templates: not yet"); }
us_status us_chat_template_for(const us_tokenizer *tok, const char *force, us_chat_template **out, us_err *e) {
    *out = NULL; return us_fail(e, US_EUNSUPPORTED, "chat templates: not yet"); }
us_status us_chat_render(const us_chat_template *ct, const cJSON *messages, bool add_generation_prompt, char **out,
                         size_t *len, us_err *e) { return us_fail(e, US_EUNSUPPORTED, "chat templates: not yet"); }
void us_chat_template_free(us_chat_template *ct) {}
