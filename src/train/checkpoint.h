/* checkpoint.h — crash-safe training checkpoints and exact resume.
 *
 * A checkpoint is a directory OUT/checkpoint-<step>/ holding
 *   state.safetensors   the flat trainable parameters and AdamW's m and v (F32, exact bytes),
 *   adapter_config.json + adapter_model.safetensors   the adapter at that step (LoRA runs; a
 *                       full fine-tuning checkpoint keeps its weights in state.safetensors only),
 *   manifest.json       written LAST: step, skipped-update counts, sampler epoch and cursor, the
 *                       --metrics length, the options that decide the run, and the size and
 *                       FNV-1a hash of every other file.
 * Every file is written atomically (temporary file, fsync, rename, directory fsync), so a
 * checkpoint is complete exactly when its manifest exists and its hashes match; a kill at any
 * instant leaves either the previous newest checkpoint or a new complete one. After each save the
 * adapter at the top of OUT is refreshed (again atomically, weights then config), so OUT always
 * holds a complete adapter, and checkpoints beyond the newest --keep are removed (manifest
 * first, so a half-removed directory reads as incomplete).
 * Resume picks the newest checkpoint that validates, refuses one written with different options
 * (naming the option), restores parameters, optimizer moments, step, skip counts and sampler
 * position (the permutation is a pure function of seed and epoch), and cuts --metrics back to
 * the length it had at that step before appending: after any number of kills, the metrics file
 * holds each step once, and the losses and the final adapter equal an uninterrupted run's.
 * UNSWAG_TEST_SLOW_SAVE_MS (tests only, ignored unless set) sleeps before each file write so a
 * test can land kills inside the write window. */
#ifndef US_CHECKPOINT_H
#define US_CHECKPOINT_H

#include <stdio.h>

#include "model/model.h"
#include "train/trainer.h"

/* Where a run stands after `step` optimizer steps. */
typedef struct us_ckpt_state {
    int step;              /* optimizer steps done */
    int skipped;           /* updates skipped so far; AdamW's step count is step - skipped */
    int consec_skipped;    /* non-finite updates in a row at the end */
    uint64_t epoch, cursor;/* sampler position: permutation of `epoch` (from the seed), next index */
    int64_t metrics_bytes; /* length of the --metrics file after this step; -1: no metrics */
} us_ckpt_state;

/* The run being checkpointed or resumed. */
typedef struct us_ckpt_run {
    const us_train_opts *o;
    us_model *m;
    float *adam_m, *adam_v; /* device buffers of m->n_params floats */
    FILE *metrics;          /* NULL without --metrics */
    int steps, seq, warmup; /* as resolved by the trainer */
    size_t n_examples;
} us_ckpt_run;

/* Writes OUT/checkpoint-<s->step>/, refreshes OUT's adapter (or full model), prunes to --keep.
 * The path written goes to saved (cap bytes). */
us_status us_ckpt_save(const us_ckpt_run *r, const us_ckpt_state *s, char *saved, size_t cap, us_err *e);

/* Newest valid checkpoint under OUT: restores it into the run's buffers and *s, *found = true;
 * none: *found = false (a fresh start). A checkpoint of a different run is an error. */
us_status us_ckpt_resume(const us_ckpt_run *r, us_ckpt_state *s, bool *found, char *from, size_t cap, us_err *e);

/* Checks a checkpoint directory: manifest readable, every listed file present with its size and
 * hash. *step (optional) receives its step. */
us_status us_ckpt_validate(const char *dir, int *step, us_err *e);

/* Newest checkpoint directory under out_dir that validates, into path; false when none. */
bool us_ckpt_newest(const char *out_dir, char *path, size_t cap, int *step);

/* Preflight for a fresh run (no --resume): out_dir must not already hold checkpoints, which a
 * later --resume would confuse with this run's. */
us_status us_ckpt_check_fresh(const char *out_dir, us_err *e);

/* Opens --metrics: truncated when keep_bytes < 0; else cut back to keep_bytes and appended to. */
us_status us_metrics_open(const char *path, int64_t keep_bytes, FILE **out, us_err *e);

/* Bytes one checkpoint of this model takes on disk (state + adapter + manifest, roughly). */
uint64_t us_ckpt_bytes(const us_model *m);

#endif
