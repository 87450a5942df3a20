/* trainer.h — one fine-tuning run: options in, adapter (or full checkpoint) and metrics out. */
#ifndef US_TRAINER_H
#define US_TRAINER_H

#include <signal.h>

#include "core/common.h"
#include "train/optim.h"

typedef struct us_train_opts {
    const char *model_dir, *data_path, *out_dir, *adapter_init, *metrics_path, *device;
    const char *tokenizer_path, *chat_template; /* text data: tokenizer (default: the model's), template */
    bool train_on_prompt, refuse_long; /* labels on prompts too; refuse rows over --seq-len */
    bool extend_context; /* --seq-len may pass max_position_embeddings (context extension) */
    int recompute;    /* US_RECOMPUTE_* (model.h) */
    int recompute_layers; /* with US_RECOMPUTE_MLP: only the first this many layers (0: all) */
    int offload_mlp;      /* this many layers keep gate/up in pinned host memory (model.h) */
    bool offload_embed;   /* the embedding table in pinned host memory (model.h embed_host) */
    int keep_attn, offload_attn; /* layer rebuilds: attention outputs kept on the device / host (model.h) */
    double max_memory;    /* GiB > 0: choose the memory plan (and micro-batch) that fits (preflight.h) */
    bool offload;     /* layer inputs in pinned host memory (implies layer recompute) */
    int lora_r;
    double lora_alpha;
    unsigned targets; /* bitmask of 1 << US_T_* */
    bool rslora;
    double lr, weight_decay, beta1, beta2, eps, grad_clip;
    us_schedule schedule;
    int warmup;       /* -1: 3% of the steps */
    int grad_accum, steps, batch, seq_len; /* steps/seq_len 0: --epochs passes / longest row */
    int epochs;       /* 0: one (used when steps is 0) */
    bool packing;     /* pack examples into rows (train/batch.h) instead of one per row */
    double val_split; /* > 0: hold out this seeded fraction of the examples as the eval set */
    bool shuffle, random_init, full, quiet;
    uint64_t seed;
    int threads;
    float init_std;
    /* checkpoints (train/checkpoint.h): every save_every steps (0: none) under out_dir, the
     * newest `keep` kept; resume continues from the newest complete one. max_skips non-finite
     * updates in a row stop the run (0: never). *stop (optional), set by a signal handler,
     * makes the run save a checkpoint after the current step and return US_OK. */
    int save_every, keep, max_skips;
    bool resume;
    volatile sig_atomic_t *stop;
    /* records (train/report.h, train/evaluate.h): report_path writes an HTML report at the end;
     * report (optional) receives the run's curves, configuration and plan under run_name
     * instead of or besides that; eval_data_path is scored every eval_every steps (0: 10% of
     * the run) and at the end. */
    const char *report_path, *run_name, *eval_data_path;
    struct us_report *report;
    int eval_every;
} us_train_opts;

/* Defaults users expect: r 16, alpha 32, all seven projections, lr 2e-4, cosine, 3% warmup,
 * AdamW (0.9, 0.999, 1e-8, no weight decay), clipping at 1.0, batch 4, shuffled, seed 42. */
void us_train_opts_default(us_train_opts *o);
us_status us_train(const us_train_opts *o, us_err *e);

#endif
