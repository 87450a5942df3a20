/* tokenizer.h — Hugging Face tokenizer.json: load, encode, decode.
 *
 * Supported pipelines (what the Llama-2/3, Mistral, Qwen2/3, Gemma and GPT-2 families ship):
 *   normalizers  Sequence, NFC, Prepend, Replace (string or regex), Strip, Lowercase (ASCII)
 *   pre-tokens   Sequence, Split (regex or string; Isolated, Removed, MergedWithPrevious,
 *                MergedWithNext, Contiguous; invert), ByteLevel (with or without the GPT-2 regex), Metaspace, Digits
 *   model        BPE (merges ranked, ignore_merges, byte_fallback, unk)
 *   post         TemplateProcessing, ByteLevel, Sequence of those
 *   decoders     ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence
 * Added tokens are cut out of the raw text first (leftmost, longest match, like Hugging Face with
 * split_special_tokens=false), honouring lstrip/rstrip/single_word.
 *
 * A us_tokenizer is immutable after loading except for its word cache and regex scratch, so one
 * tokenizer must not encode from two threads at once; load one per thread (or use a lock). */
#ifndef US_TOKENIZER_H
#define US_TOKENIZER_H

#include "core/common.h"

typedef struct us_tokenizer us_tokenizer;

/* path: a tokenizer.json, or a directory holding one (tokenizer_config.json beside it is read
 * too when present, for bos/eos names and the chat template). */
us_status us_tokenizer_load(const char *path, us_tokenizer **out, us_err *e);
/* Same, from an in-memory tokenizer.json (config_json may be NULL). name is used in messages. */
us_status us_tokenizer_load_json(const char *json, size_t len, const char *config_json, size_t config_len,
                                 const char *name, us_tokenizer **out, us_err *e);
void us_tokenizer_free(us_tokenizer *tok);

/* Encodes len bytes of UTF-8 text (invalid UTF-8: US_EINVAL). *ids is malloc'd (free()); with
 * add_special the post-processor's template (e.g. BOS) is applied. */
us_status us_tokenizer_encode(us_tokenizer *tok, const char *text, size_t len, bool add_special, int32_t **ids,
                              size_t *n, us_err *e);
/* Decodes ids to a NUL-terminated malloc'd UTF-8 string (free()). skip_special drops special
 * added tokens. Unknown ids: US_EINVAL. Invalid byte sequences become U+FFFD, as HF does. */
us_status us_tokenizer_decode(const us_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special, char **text,
                              size_t *len, us_err *e);

/* Id of a token's exact string (added tokens included), or -1. */
int32_t us_tokenizer_token_id(const us_tokenizer *tok, const char *token);
/* The string of an id (raw bytes for byte-level vocabularies), or NULL. */
const char *us_tokenizer_id_to_token(const us_tokenizer *tok, int32_t id, size_t *len);
bool us_tokenizer_is_special(const us_tokenizer *tok, int32_t id);
int32_t us_tokenizer_bos_id(const us_tokenizer *tok); /* -1 when none */
int32_t us_tokenizer_eos_id(const us_tokenizer *tok); /* -1 when none */
int32_t us_tokenizer_pad_id(const us_tokenizer *tok); /* -1 when none */
/* One more than the largest id (model vocabulary and added tokens). */
int32_t us_tokenizer_vocab_size(const us_tokenizer *tok);
/* Strings from tokenizer_config.json, or NULL when absent. */
const char *us_tokenizer_chat_template(const us_tokenizer *tok);
const char *us_tokenizer_bos_token(const us_tokenizer *tok);
const char *us_tokenizer_eos_token(const us_tokenizer *tok);
/* Where it was loaded from (for messages). */
const char *us_tokenizer_path(const us_tokenizer *tok);

/* UTF-8 helpers shared by the tokenizer, chat templates and dataset readers. */
bool us_utf8_valid(const char *s, size_t len, size_t *bad_at);
/* Decodes one code point at s (len > 0); returns its byte length, or 0 when invalid. */
size_t us_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
size_t us_utf8_encode(uint32_t cp, char out[4]);

#endif
