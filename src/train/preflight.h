/* preflight.h — checks made before a training run starts its long work, so that a run that
 * cannot finish says so at once, clearly, instead of after hours.
 *
 * Memory: the activation plan for the run's tokens per micro-batch, the weights already loaded,
 * the trainable parameters with their gradients and AdamW moments, and the batches, against the
 * backend's total memory; too much gives the breakdown and what to change. Output: the directory
 * is created if needed and proven writable with a probe file (written, synced, removed), and
 * the free space (statvfs) must hold the adapter plus the checkpoints the run will keep. */
#ifndef US_PREFLIGHT_H
#define US_PREFLIGHT_H

#include "model/model.h"

/* Run after us_model_setup_training and before us_model_prepare(m, batch * seq). Leaves the
 * model prepared for a few tokens (the trainer prepares it for the full step afterwards). */
us_status us_preflight_memory(us_model *m, int batch, int seq, int grad_accum, us_err *e);

/* --max-memory: chooses the cheapest memory plan whose planned device bytes (weights, trainable
 * parameters with gradients and AdamW moments, step arena, the backend's buffers: the trainer's
 * "planned" line) fit in budget. Candidates: a micro-batch that divides *batch (the rest becomes
 * gradient accumulation: the same update) with, for each, the embedding table in host memory or
 * not (GPU, untied LoRA), then from the bottom gate/up offloaded to host in some layers (GPU), the
 * MLP rebuilt in the next, up in the next — or whole layers rebuilt, or offload (with
 * offload_attn layers' attention outputs on the host), keeping as many attention outputs on the
 * device as fit; the one with the least estimated extra time wins (a coarse model: repeated
 * kernel launches for a split, repeated products and attention for a rebuild, copies the compute
 * cannot hide). Sets the model's memory mode and *batch / *grad_accum, and the chosen plan's bytes
 * in *planned. When nothing fits, fails naming the smallest plan's need. */
us_status us_fit_memory(us_model *m, int seq, double budget, int offload_attn, int *batch, int *grad_accum,
                        double *planned, us_err *e);

/* need_bytes: what the run will write into dir at most; why: what those bytes are, for the message. */
us_status us_preflight_out_dir(const char *dir, uint64_t need_bytes, const char *why, us_err *e);

#endif
