/* model.h — a decoder (Llama / Mistral / Qwen2) on a backend: its weights, its trainable
 * parameters (LoRA adapters, or every weight with full fine-tuning), the saved-activation plan,
 * and the forward and backward passes.
 *
 * The plan is the product: it walks the blocks in forward order, knowing which weights train, and
 * decides per layer what backward will need (see plan.c). Forward stores exactly that into one
 * arena sized per step; backward consumes it in reverse. The LM head and cross-entropy run in
 * chunks of tokens during the forward, so [tokens x vocab] logits never exist, and the gradient
 * of the final norm is formed there too: backward starts from d(residual) of the last layer. */
#ifndef US_MODEL_H
#define US_MODEL_H

#include <stdio.h>

#include "backend/backend.h"
#include "io/adapter.h"
#include "model/config.h"

/* What kinds of saved state the plan accounts for, per token. */
enum {
    US_SAVE_RESIDUAL = 0, /* layer input and mid-layer residual stream (act) */
    US_SAVE_NORM_STATS,   /* RMSNorm 1/rms per token (f32) */
    US_SAVE_QKV,          /* rotated q, k and v (act) */
    US_SAVE_ATTN_OUT,     /* attention output = o_proj input (act) */
    US_SAVE_ATTN_LSE,     /* attention log-sum-exp (f32) */
    US_SAVE_LORA_U,       /* x A^T of each adapter (f32, r per adapter) */
    US_SAVE_MLP,          /* gate (or relu(gate)) and up projections (act) */
    US_SAVE_MLP_MASK,     /* ReLU gate bits, 32 per uint32 */
    US_SAVE_MLP_DOWN_IN,  /* down_proj input when nothing else needs gate/up */
    US_SAVE_KINDS
};
const char *us_save_kind_name(int kind);

typedef struct us_layer_plan {
    bool attn_bwd;    /* attention core backward runs (q/k/v LoRA, or anything trainable below) */
    bool prior_attn;  /* something trainable before this layer: d(residual) must flow further */
    bool save_att;    /* attention output kept (o_proj LoRA, or attn_bwd) */
    bool glu_bwd;     /* gate/up backward runs */
    bool prior_mlp;   /* something trainable before this MLP */
    bool save_a;      /* only the down_proj input is kept */
} us_layer_plan;

typedef struct us_plan {
    us_layer_plan *layer;
    double bytes_per_token[US_SAVE_KINDS]; /* summed over layers */
    double total_per_token;
    double store_all_per_token; /* what keeping every forward intermediate would need */
    double host_per_token;      /* bytes per token kept in pinned host memory (offload) */
    int first_layer_bwd;        /* backward stops after this layer */
} us_plan;

typedef struct us_lora_slot {
    bool on;
    int in, out;
    size_t off_A, off_B; /* offsets into the flat parameter buffer */
} us_lora_slot;

/* One trainable tensor of the flat parameter buffer (LoRA A/B, or a full weight). */
typedef struct us_param {
    char name[256];
    size_t off, numel;
    int ndim;
    int64_t shape[2];
    void *weight;  /* full fine-tuning: the backend weight-format copy to refresh, or NULL */
} us_param;

typedef struct us_layer_weights {
    void *w[US_T_COUNT];   /* q,k,v,o,gate,up,down in backend weight format */
    float *b[US_T_COUNT];  /* biases (f32) or NULL */
    float *ln1, *ln2;      /* f32 */
    /* full fine-tuning: gradients (f32, inside the flat gradient buffer); NULL when frozen */
    float *gw[US_T_COUNT], *gb[US_T_COUNT], *gln1, *gln2;
} us_layer_weights;

/* Where one layer's forward tensors live for the current step: in the arena when the plan keeps
 * them for backward, else in scratch shared by all layers. */
typedef struct us_layer_acts {
    void *xin, *xmid, *q, *k, *v, *att, *g, *up, *a;
    float *rstd1, *rstd2, *lse, *u[US_T_COUNT];
    uint32_t *bits;
} us_layer_acts;

typedef struct us_train_spec {
    bool full;             /* train every weight instead of adapters */
    us_lora_config lora;   /* used when !full */
} us_train_spec;

typedef struct us_model {
    us_config cfg;
    us_backend *be;
    us_train_spec spec;
    float lora_scale;
    void *embed, *lm_head; /* lm_head == embed when tied */
    float *norm_f;
    us_layer_weights *L;
    float *inv_freq;       /* [head_dim/2] on the device */
    us_lora_slot (*slot)[US_T_COUNT];
    /* LoRA groups: projections reading the same input (q/k/v, o, gate/up, down) share one
     * lora_down and one lora_bwd_x. Per target (the same in every layer): the first adapted
     * target of its group (-1: none in the group), its first column in the group's u / du block
     * (adapted targets) and that block's width (row pitch) n*r. The A matrices of a group lie contiguously in
     * the parameter buffer, so the lead's A is the group's [n*r, in] block. */
    int lora_lead[US_T_COUNT], lora_col[US_T_COUNT], lora_ld[US_T_COUNT];
    /* Folded groups (q/k/v and gate/up, whose input is a normed hidden state that step.c writes
     * itself): every member's frozen matrix is stored as [out, in + fold] with s*B in its own
     * column block of the extra columns (zeros in the others, refreshed from the masters before
     * each forward), and the normed input as [T, in + fold] with u = x A^T written beside it, so
     * one frozen product computes x W^T + s u B^T. fold[t] = the group's width R (0: not folded);
     * wld[t] = in + fold[t], the row pitch of target t's frozen matrix. */
    int fold[US_T_COUNT], wld[US_T_COUNT];
    /* Backward folding of o and down, whose output gradient is the residual's (dres): their
     * frozen matrices get fold_rows[t] = r extra rows holding A, dres gets r extra columns
     * (row pitch dres_ld) that lora_bwd_dy fills with du, and the input-gradient product over
     * out + r rows computes dy W + du A in one pass. */
    int fold_rows[US_T_COUNT], dres_ld;
    /* q, k, v folded alike lie in one block of rows (k's and v's matrices are q's next rows): the
     * input gradient of the three is one product over [dq | dk | dv] (s.dqkv, row pitch
     * (heads + 2 kv_heads) * head_dim; step.c) */
    bool qkv_joint;
    /* Backward folding of the joint q/k/v block: qkv_fold = R extra rows below it holding the
     * group's A ([R, in], refreshed like the rest), s.dqkv gets R extra columns (row pitch
     * qkv_ld) that lora_bwd_dy fills with du, and the one input-gradient product over
     * [dq | dk | dv | du] forms dx with the LoRA term (0: lora_bwd_x forms du A instead) */
    int qkv_fold, qkv_ld;
    int qkv_joint_layers; /* layers whose k and v already lie in q's block (the rest: their own, on a failed load) */
    bool qkv_merge;       /* training merges dq, dk, dv into s.dqkv (it fits over datt and da: plan.c) */
    us_put *fold_list; /* backend memory: every folded s*B and A block, for us_model_fold_refresh */
    int n_fold;
    /* flat trainable state on the device */
    size_t n_params;
    float *params, *grads;
    us_param *plist;
    size_t n_plist;
    float *g_embed, *g_lm_head, *g_norm_f; /* full fine-tuning gradients, else NULL */
    us_plan plan;
    /* memory mode (us_model_set_memory_mode): 0 keep the plan's set, US_RECOMPUTE_MLP rebuild the
     * MLP in backward, US_RECOMPUTE_LAYER keep only layer inputs; offload moves those to host */
    int recompute;
    int recompute_layers;  /* US_RECOMPUTE_MLP: the first this many layers rebuild their MLP (0: all) */
    int up_layers;         /* the next this many rebuild only their up projection */
    int offload_mlp;       /* this many, the lowest layers, keep gate/up on the host (us_layer_mode) */
    void **host_mlp;       /* per layer: pinned host gate and up (NULL where not offloaded) */
    /* per layer: the layer whose gate and up used the same device slot before it in the forward
     * (-1: none) — offloaded layers and the keeping layers above them share a pool of slots
     * (plan.c); and the ticket of the copy (backend.h) that last moved this layer's gate/up */
    int *mlp_prev, *mlp_ticket;
    bool offload;
    /* US_RECOMPUTE_LAYER: the top keep_attn layers keep their attention output and lse on the
     * device, the next offload_attn the output in pinned host memory (host_att; lse on the
     * device), so backward rebuilds those layers without re-running attention (us_layer_attn);
     * att_ticket: per layer, the copy that last moved its output */
    int keep_attn, offload_attn;
    void **host_att;
    int *att_ticket;
    int mlp_rows;          /* MLP rows processed at once (T unless recomputing) */
    int mlp_chunk_rows;    /* requested chunk when recomputing (0: chunk buffers within 256 MiB) */
    int head_chunk_rows;   /* requested LM-head chunk (0: as the layout allows, at least 64 MiB of logits) */
    void **host_xin;       /* offload: pinned host copies of each layer's input */
    bool embed_host;       /* wanted: the embedding table in pinned host memory (us_memory_mode) */
    bool embed_on_host;    /* where m->embed is now (us_model_prepare moves it) */
    size_t weight_bytes;   /* frozen weights on the backend */
    /* per-step buffers, sized for max_tokens */
    int max_tokens;
    void *arena;
    size_t arena_bytes, saved_bytes;
    int head_chunk;        /* rows of logits formed at once */
    us_layer_acts *acts;   /* [layers] */
    struct us_scratch {
        void *h, *a, *dres, *dh, *dq, *dk, *dv, *datt, *da, *logits, *xfin, *dqkv;
        float *rstd, *lora, *loss;
    } s;
    size_t backend_scratch; /* the backend's own buffers for a step (scratch_bytes op), if known */
    uint64_t step_key;      /* the last training step's shape and scale (step.c: graph replay) */
} us_model;

/* The LoRA group of projection t: 0 q/k/v, 1 o, 2 gate/up, 3 down. */
int us_target_group(int t);

/* in/out features of projection t (US_T_*) */
void us_target_dims(const us_config *c, int t, int *in, int *out);

/* One micro-batch on the device: batch rows of seq tokens. */
typedef struct us_batch {
    int batch, seq;
    int32_t *ids, *targets, *pos, *seg_start; /* device; targets = labels shifted left, -100 ignored */
} us_batch;

/* Builds a model from a Hugging Face directory (config.json + safetensors) or, with random_init,
 * from config.json alone (weights N(0, std^2), norms 1, biases 0; the same on every backend). */
us_status us_model_load(us_model **out, us_backend *be, const char *dir, bool random_init, float init_std,
                        uint64_t seed, us_err *e);
void us_model_free(us_model *m);

/* Adds trainable parameters: LoRA adapters per spec (A ~ PEFT's kaiming-uniform from seed, B = 0),
 * or every weight with spec->full. */
us_status us_model_setup_training(us_model *m, const us_train_spec *spec, uint64_t seed, us_err *e);
/* Copies s*B of every folded target from the masters into its frozen matrix's extra columns
 * (run before each forward; cheap: out x r per target). */
void us_model_fold_refresh(us_model *m);
/* Full fine-tuning: refreshes the weight-format copies from the f32 masters after an update. */
void us_model_sync_weights(us_model *m);
/* Loads A/B of an existing PEFT adapter (its config must match the spec). */
us_status us_model_load_adapter(us_model *m, const char *dir, us_err *e);
us_status us_model_save_adapter(us_model *m, const char *dir, const char *base_model, us_err *e);
/* Writes every weight (full fine-tuning result) as a Hugging Face checkpoint into dir. */
us_status us_model_save_full(us_model *m, const char *dir, const char *src_dir, us_err *e);

enum { US_RECOMPUTE_NONE = 0, US_RECOMPUTE_MLP = 1, US_RECOMPUTE_LAYER = 2,
       US_RECOMPUTE_UP = 3,     /* per layer only (us_layer_mode): keep the gate, rebuild the up projection */
       US_OFFLOAD_MLP = 4 };    /* per layer only: gate and up kept in pinned host memory */
/* What backward recomputes or fetches instead of keeping (us_model_set_memory_mode, before
 * us_model_prepare).
 *   recompute: US_RECOMPUTE_NONE, _MLP or _LAYER for the whole model;
 *   mlp_layers: with US_RECOMPUTE_MLP, only the first mlp_layers layers (above the offloaded ones)
 *     rebuild their MLP (0: all);
 *   up_layers: the next up_layers layers keep the gate but rebuild the up projection (one product
 *     instead of the MLP's two, half the MLP's bytes);
 *   offload_mlp: that many layers, the lowest (below the rebuilding ones), keep gate and up in
 *     pinned host memory: copied out after the layer's forward from the slot a higher layer then
 *     takes, and back once that layer's backward is done, overlapped with compute (plan.c: the
 *     gate/up pool);
 *   offload: implies US_RECOMPUTE_LAYER; each layer's input goes to pinned host memory during the
 *     forward and comes back, one layer ahead, during backward;
 *   keep_attn, offload_attn (US_RECOMPUTE_LAYER): the top keep_attn layers keep their attention
 *     output and lse on the device, the next offload_attn the output in pinned host memory, so
 *     their rebuild in backward skips the attention (the step's costliest op at long context);
 *   mlp_chunk_rows: tokens of the MLP processed at once in MLP-rebuilding layers (0: as many as
 *     keep its four chunk buffers within 256 MiB);
 *   head_chunk_rows: tokens whose logits the LM head forms at once (0: as many as fit in the
 *     layer scratch the logits lie over, at least 64 MiB of logits);
 *   embed_host: the token-embedding table lives in pinned host memory, where the embedding op
 *     reads the step's rows (a GPU reads them over the host link: T rows, not the table); only
 *     for a frozen table that is not also the LM head (LoRA, untied embeddings). */
typedef struct us_memory_mode {
    int recompute, mlp_layers, up_layers, offload_mlp;
    int keep_attn, offload_attn; /* with US_RECOMPUTE_LAYER / offload (model.h us_model) */
    bool offload, embed_host;
    int mlp_chunk_rows, head_chunk_rows;
} us_memory_mode;
us_status us_model_set_memory_mode(us_model *m, const us_memory_mode *mm, us_err *e);
/* Why embed_host cannot apply to this model (a sentence), or NULL when it can. */
const char *us_model_embed_host_refusal(const us_model *m);
/* The memory mode of layer l (US_RECOMPUTE_*), as the plan applies it. */
int us_layer_mode(const us_model *m, int l);
/* Where a layer-rebuilding layer's attention output comes from in backward: re-run, or kept on
 * the device or in pinned host memory (keep_attn / offload_attn, counted from the top layer). */
enum { US_ATT_REBUILD = 0, US_ATT_DEVICE = 1, US_ATT_HOST = 2 };
int us_layer_attn(const us_model *m, int l);
/* The memory mode in words, e.g. "recompute mlp in the first 12 of 30 layers". */
void us_memory_mode_describe(const us_model *m, char *buf, size_t n);
/* "none" | "mlp" | "layer" | "up" (US_RECOMPUTE_UP: give it to us_model_set_memory_mode as up_layers) */
bool us_recompute_parse(const char *name, int *out);

/* Bytes of frozen weights on the device once the memory mode is applied (embed_host moves the
 * embedding table off it at us_model_prepare). */
size_t us_model_device_weight_bytes(const us_model *m);
/* Computes the plan for the current training spec and sizes the arena for max_tokens. */
us_status us_model_prepare(us_model *m, int max_tokens, us_err *e);
/* The arena bytes a step of `tokens` tokens needs, without allocating (preflight). */
us_status us_model_step_bytes(us_model *m, int tokens, size_t *bytes, us_err *e);
/* Prints the plan: bytes per token by kind beside the store-everything figure. */
void us_plan_print(const us_model *m, FILE *f);

/* Forward + backward of one micro-batch: gradients are added into m->grads, scaled by grad_scale
 * (1 / counted tokens of the whole optimizer step). Returns the sum of token losses. */
us_status us_model_step(us_model *m, const us_batch *b, float grad_scale, double *loss_sum, us_err *e);
/* Forward only; logits_host (optional) receives [T, vocab] f32, loss_sum/count the loss. */
us_status us_model_forward(us_model *m, const us_batch *b, float *logits_host, double *loss_sum, us_err *e);

#endif
