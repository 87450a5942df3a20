/* formats.h — the training data users bring, turned into token examples with loss masks.
 *
 * us_dataset_load reads:
 *   .txt                      continued pretraining: the whole text tokenized (BOS per the
 *                             tokenizer's template, EOS at the end) and cut into seq_len rows;
 *   .jsonl / .json lines with one of
 *     "input_ids" [+ "labels"]  pre-tokenized (data/tokens.h rules);
 *     "messages"                chat, rendered by the tokenizer's chat template (tok/chat.h);
 *     "instruction" [+ "input"] + "output"   Alpaca, in the Alpaca prompt format;
 *     "prompt" + "completion"   prompt/completion;
 *     "text"                    plain text.
 * Instruction, chat and prompt/completion rows get label -100 on the prompt part unless
 * opt->train_on_prompt. EOS is appended to text, Alpaca and prompt/completion rows (chat rows end
 * with the template's own end-of-turn). Errors name FILE:LINE. */
#ifndef US_FORMATS_H
#define US_FORMATS_H

#include "core/common.h"
#include "data/tokens.h"
#include "tok/tokenizer.h"

typedef struct us_data_options {
    int seq_len;                /* 0: no limit; else longer rows are truncated (or refused) */
    bool refuse_long;           /* error instead of truncating */
    bool train_on_prompt;       /* labels on the prompt too */
    bool no_eos;                /* do not append EOS */
    const char *chat_template;  /* force a chat template (name or file), NULL: the tokenizer's */
    size_t n_truncated;         /* out: rows truncated */
    struct us_token_spill *spill; /* internal (data/load.c): stream examples into a token cache */
} us_data_options;

us_status us_dataset_load(const char *path, us_tokenizer *tok, us_data_options *opt, us_token_dataset *out,
                          us_err *e);

#endif
