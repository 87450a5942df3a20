/* backend.h — the op table every compute backend implements (cpu now, cuda next, xla later).
 *
 * The model (src/model/) says what to compute and what to keep for backward; a backend says how,
 * over its own memory. Model code holds only opaque device pointers and calls these ops; it has
 * no backend branches. Conventions:
 *   - Row-major. T tokens = batch * seq, laid out [batch][seq]. A "linear" weight is [out, in]
 *     (Hugging Face layout) and computes y = x W^T.
 *   - Activations are in the backend's activation type (act_bytes per element: 4 = f32 on the
 *     CPU, 2 = bf16 on CUDA). Frozen matrices are in the backend's weight format, made by
 *     weight_upload. Vectors (norm weights, biases), LoRA A/B, every gradient of a trainable
 *     parameter, rstd, lse and the loss are f32 on every backend. Token ids, labels and positions
 *     are int32. Packed ReLU masks are uint32 words, bit (i % 32) of word (i / 32) for element i
 *     of a [rows, cols] tensor packed row by row with cols padded to a multiple of 32 — the same
 *     on every backend, so one backend can check another bit for bit.
 *   - "acc" arguments: false writes the output, true adds into it.
 *   - Ops are asynchronous with respect to the host unless they return a host value.
 */
#ifndef US_BACKEND_H
#define US_BACKEND_H

#include "core/common.h"

typedef struct us_backend us_backend;

/* The activation function of a gated MLP: a = act(g) * u. */
enum { US_GLU_SILU = 0, US_GLU_RELU = 1 };

/* Attention shape for one call: batch rows of seq tokens, heads query heads sharing kv_heads
 * key/value heads (heads % kv_heads == 0), head_dim each. q is [T, heads*head_dim], k and v are
 * [T, kv_heads*head_dim], o like q, lse [T, heads] (natural log). seg_start, when not NULL, gives
 * for each token the position (within its row) where its example begins: token i attends to
 * keys j with seg_start[i] <= j <= i (packed examples never see each other). */
/* One block for weight_put_list: W[i*ldw + j] = s * src[i*cols + j] (i < rows, j < cols). */
typedef struct us_put {
    void *W;
    const float *src;
    int ldw, rows, cols;
    float s;
} us_put;

typedef struct us_attn_shape {
    int batch, seq, heads, kv_heads, head_dim;
    float scale; /* usually 1/sqrt(head_dim) */
    int ldo;     /* row pitch of the output o, in elements (0: heads * head_dim; more leaves o_proj's
                    folded LoRA columns beside it) */
} us_attn_shape;

/* attn_bwd's q/k/v input gradients already merged: qkv_merge's output (dst [T, (heads + 2
 * kv_heads) head_dim], row pitch ld; rope^-1 at pos with inv_freq for the dq and dk columns). */
typedef struct us_qkv_merge_out {
    void *dst;
    int ld;
    const int32_t *pos;
    const float *inv_freq;
} us_qkv_merge_out;

/* the output's row pitch of an attention shape */
static inline int us_attn_ldo(const us_attn_shape *sh) { return sh->ldo > 0 ? sh->ldo : sh->heads * sh->head_dim; }

struct us_backend {
    const char *name; /* "cpu", "cuda" */
    size_t act_bytes;    /* bytes per activation element */
    size_t weight_bytes; /* bytes per element of a frozen weight (its weight format) */
    void *impl;       /* backend-private state */

    /* ---- memory ---- */
    void *(*alloc)(us_backend *be, size_t bytes); /* NULL on failure; contents undefined */
    void (*free)(us_backend *be, void *p);
    void (*upload)(us_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(us_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*zero)(us_backend *be, void *p, size_t bytes);
    /* device-to-device copy (dst and src do not overlap) */
    void (*copy)(us_backend *be, void *dst, const void *src, size_t bytes);
    void (*sync)(us_backend *be);
    /* Bytes the backend holds now and at its peak (allocations only), and the device's total. */
    void (*mem_info)(us_backend *be, size_t *in_use, size_t *peak, size_t *total);

    /* ---- frozen weights ---- */
    /* A frozen matrix or embedding of n elements from host data of dtype dt (F32/BF16/F16),
     * converted to the backend's weight format. NULL on allocation failure. */
    void *(*weight_upload)(us_backend *be, const void *host, us_dtype dt, size_t n);
    /* Fills a weight-format buffer with N(0, std^2) from us_rand_normal(seed, stream, i). */
    void (*weight_fill_normal)(us_backend *be, void *w, size_t n, float std, uint64_t seed, uint64_t stream);
    /* Copies an f32 master (full fine-tuning) into a weight-format buffer. */
    void (*weight_from_f32)(us_backend *be, void *w, const float *src, size_t n);
    void (*weight_to_f32)(us_backend *be, float *dst, const void *w, size_t n);
    /* A [rows, cols] block of a weight-format matrix with row pitch ldw: W[i*ldw + j] =
     * s * src[i*cols + j] from f32 device memory, or 0 where src is NULL. */
    void (*weight_put)(us_backend *be, void *W, int ldw, const float *src, int rows, int cols, float s);
    /* weight_put for n blocks at once, listed in backend memory (one launch on a GPU). */
    void (*weight_put_list)(us_backend *be, const us_put *list, int n);
    /* Elementwise act-type <-> f32 conversions on device memory. */
    void (*act_from_f32)(us_backend *be, void *dst, const float *src, size_t n);
    void (*act_to_f32)(us_backend *be, float *dst, const void *src, size_t n);

    /* ---- layers (forward and backward side by side) ---- */
    /* x[t] = E[ids[t]], E [vocab, dim] in weight format, in device memory or in host memory from
     * host_alloc (the model's embed_host: the op then reads the T rows over the host link). */
    void (*embed_fwd)(us_backend *be, void *x, const void *E, const int32_t *ids, int T, int dim);
    /* dE[ids[t]] += dx[t] (dE f32 [vocab, dim]). */
    void (*embed_bwd)(us_backend *be, float *dE, const void *dx, const int32_t *ids, int T, int dim);

    /* y = x * rstd * w, rstd[t] = 1/sqrt(mean(x[t]^2) + eps); y rows ldy elements apart (>= dim;
     * the columns past dim are left alone). y may not alias x. */
    void (*rmsnorm_fwd)(us_backend *be, void *y, int ldy, float *rstd, const void *x, const float *w, int T, int dim,
                        float eps);
    /* dx (acc or not; rows ldx elements apart, >= dim) from dy, x, rstd, w; dw (f32, may be NULL)
     * += sum over t. */
    void (*rmsnorm_bwd)(us_backend *be, void *dx, int ldx, bool acc, float *dw, const void *dy, const void *x,
                        const float *rstd, const float *w, int T, int dim);

    /* y[T,out] = res + x[T,in] W^T + bias (bias f32 or NULL; res NULL: none, res == y: adds into
     * y, else another [T, out] tensor, read as the product's source). Rows of x are ldx elements
     * apart, rows of W ldw (both >= in; y and res are [T, out] dense). */
    void (*linear_fwd)(us_backend *be, void *y, const void *res, const void *x, int ldx, const void *W, int ldw,
                       const float *bias, int T, int in, int out);
    /* dx[T,in] = dy[T,out] W (acc adds); rows of dy lddy elements apart (>= out), rows of W ldw
     * (>= in). */
    void (*linear_bwd_x)(us_backend *be, void *dx, bool acc, const void *dy, int lddy, const void *W, int ldw, int T,
                         int in, int out);
    /* dW[out,in] += dy^T x and dbias[out] += sum_t dy (each may be NULL); f32 grads. */
    void (*linear_bwd_w)(us_backend *be, float *dW, float *dbias, const void *dy, const void *x, int T, int in,
                         int out);

    /* LoRA beside a frozen linear y = x W^T, in four products. Each is one pass over a wide
     * operand (x, y, dy or dx) against a side of width R; the model runs them *before* the frozen
     * product, which then accumulates on top (acc), so no pass reads y or dx back just to add.
     * Projections that share an input (q/k/v; gate/up) share one lora_down and one lora_bwd_x:
     * their A matrices lie contiguously as one [R = n*r, in] block and their u / du as column
     * blocks of one [T, R] f32 tensor (row pitch ldu); see step.c. A [R,in], B [out,r] f32.
     *   lora_down:   u = x A^T
     *   lora_up:     y = res + s * u B^T            (res NULL: y = s u B^T; res may equal y)
     *   lora_bwd_dy: du = s * dy B;  dB += s * dy^T u
     *   lora_bwd_x:  dA += du^T x;  dx = res + du A   (dx NULL: only dA; dA NULL: only dx; res as lora_up)
     * x has row pitch ldx (>= in). fold (lora_down): u is also written, in the activation type,
     * into x's columns in..in+R-1 (ldx >= in + R), so that a frozen product over in + R columns
     * against [W | s B] computes x W^T + s u B^T in one pass (step.c, "folded" groups). Likewise
     * lora_bwd_dy: dy has row pitch ldy (>= out), and fold_at > 0 writes du into dy's columns
     * fold_at..fold_at+r-1 (beside dy: fold_at = out; ldy >= fold_at + r), so that dy's
     * input-gradient product over those rows of [W; A] adds du A (0: no fold). */
    void (*lora_down)(us_backend *be, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in, int R,
                      bool fold);
    void (*lora_up)(us_backend *be, void *y, const void *res, const float *u, int ldu, const float *B, float s, int T,
                    int out, int r);
    void (*lora_bwd_dy)(us_backend *be, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u, int ldu,
                        const float *B, float s, int T, int out, int r, int fold_at);
    /* lora_bwd_x with rstd (f32 [T]) and w (f32 [in]) not NULL: x is an RMSNorm's input and dA
     * uses the normed rows x[t, i] * rstd[t] * w[i] without their being written anywhere (the
     * model then need not rebuild them for backward). */
    void (*lora_bwd_x)(us_backend *be, void *dx, const void *res, float *dA, const float *du, int lddu, const void *x,
                       int ldx, const float *rstd, const float *w, const float *A, int T, int in, int R);

    /* In-place rotary embedding of x [T, nh, hd] (rotate-half layout, as Hugging Face): for pair
     * (i, i+hd/2) at position p = pos[t], angle p*inv_freq[i]. inverse rotates by -angle (the
     * backward of the rotation). inv_freq f32 [hd/2] on the device. */
    void (*rope)(us_backend *be, void *x, const int32_t *pos, const float *inv_freq, int T, int nh, int hd,
                 bool inverse);

    /* Backward of q/k/v's rotation, out of place into one matrix: dst [T, (nq + 2 nkv) hd] (row
     * pitch ld) = [rope^-1(dq) | rope^-1(dk) | dv], with dq [T, nq, hd], dk and dv [T, nkv, hd]
     * as attn_bwd writes them — the input of one q/k/v input-gradient product. */
    void (*qkv_merge)(us_backend *be, void *dst, int ld, const void *dq, const void *dk, const void *dv,
                      const int32_t *pos, const float *inv_freq, int T, int nq, int nkv, int hd);

    /* Causal attention. Forward writes o and lse only (no score matrix is kept). */
    void (*attn_fwd)(us_backend *be, void *o, float *lse, const void *q, const void *k, const void *v,
                     const int32_t *seg_start, const us_attn_shape *sh);
    /* Writes dq, dk, dv (not acc); dk/dv sum over the query heads sharing a kv head. merge not
     * NULL: merge->dst receives qkv_merge(dq, dk, dv) instead, and dq, dk, dv are scratch (left
     * undefined) — a backend that sums in f32 then rounds once, straight into the merged rows. */
    void (*attn_bwd)(us_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                     const void *v, const void *o, const float *lse, const int32_t *seg_start,
                     const us_attn_shape *sh, const us_qkv_merge_out *merge);

    /* Gated MLP activation over n = T*F elements: a = act(g) * u.
     * RELU: also writes the packed mask bits (g > 0) and replaces g in place by relu(g); cols = F
     *       gives the packing row length. bits may be NULL (recompute: nothing packed).
     * SILU: g is left as is. a may be NULL (saving only); its rows lie lda (>= cols) apart (the
     * down projection's input, with room for its folded LoRA columns). ud not NULL (a not NULL):
     * also the down projection's lora_down from a as written, ud [rows, R] (f32, row pitch ldud)
     * = a A^T with A [R, cols], and with fold its bf16 copy in a's columns cols..cols+R-1 (lda >=
     * cols + R) — lora_down(ud, ldud, a, lda, A, rows, cols, R, fold) without a second pass over a. */
    void (*glu_fwd)(us_backend *be, int act, void *a, int lda, void *g, const void *u, uint32_t *bits, int rows,
                    int cols, float *ud, int ldud, const float *A, int R, bool fold);
    /* From da and the saved state (g or relu(g), u, bits): dg = da*u*act'(g), du = da*act(g).
     * RELU reads the gate's derivative from the packed bits, unpacked in registers. dg and du
     * may alias g and u (they are consumed in place). dA (may be NULL) also receives the down
     * projection's LoRA gradient from its input, the product a = act(g) * u exactly as glu_fwd
     * forms it: dA [R, cols] += dd^T a, dd f32 [rows, R] with row pitch lddd (down's du). The
     * product is never written: one pass over g and u serves both gradients. */
    void (*glu_bwd)(us_backend *be, int act, void *dg, void *du, float *dA, const float *dd, int lddd, int R,
                    const void *da, const void *g, const void *u, const uint32_t *bits, int rows, int cols);

    /* y += x over n activation elements (residual). */
    void (*add)(us_backend *be, void *y, const void *x, size_t n);

    /* Cross-entropy over one chunk of rows: logits [rows, vocab] (act type) are replaced by
     * dlogits = (softmax - onehot(label)) * grad_scale for rows with label != -100 and by 0 for
     * the others; the sum of -log softmax[label] over counted rows is added to *loss_sum
     * (an f32 device scalar). */
    void (*xent_fwd_bwd)(us_backend *be, void *logits, const int32_t *labels, float *loss_sum, float grad_scale,
                         int rows, int vocab);

    /* ---- optimizer and reductions over f32 ---- */
    /* Decoupled AdamW over n params, as torch.optim.AdamW:
     *   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
     *   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - b_i^step. */
    void (*adamw)(us_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                  float b2, float eps, float wd, float bc1, float bc2);
    /* sum of squares (returned to the host, synchronising), and x *= s. */
    double (*sumsq)(us_backend *be, const float *x, size_t n);
    void (*scale)(us_backend *be, float *x, size_t n, float s);
    /* true if any element of x is not finite */
    bool (*nonfinite)(us_backend *be, const float *x, size_t n);

    void (*destroy)(us_backend *be);

    /* ---- incremental decoding (optional: NULL when a backend lacks it; src/model/decode.c then
     * computes this attention on the host) ---- */
    /* Attention of T new queries at positions start..start+T-1 of one sequence over its key/value
     * cache: q, o [T, heads*head_dim]; kc, vc [>= start+T, kv_heads*head_dim] (act type), rows
     * 0..start+T-1 filled. Query i attends to keys 0..start+i. sh->batch = 1, sh->seq unused. */
    void (*attn_cached)(us_backend *be, void *o, const void *q, const void *kc, const void *vc, int T, int start,
                        const us_attn_shape *sh);

    /* ---- host offload (--offload) ---- */
    /* Pinned host memory the copies below can run from asynchronously; NULL on failure. */
    void *(*host_alloc)(us_backend *be, size_t bytes);
    void (*host_free)(us_backend *be, void *p);
    /* Device -> host and host -> device copies on a copy stream, each ordered after all compute
     * issued before it, overlapping compute issued after it, and after every copy issued before
     * it. Each returns a ticket (> 0) that copy_wait takes. */
    int (*offload)(us_backend *be, void *host_dst, const void *dev_src, size_t bytes);
    int (*prefetch)(us_backend *be, void *dev_dst, const void *host_src, size_t bytes);
    /* Compute issued after this waits until every copy issued before it has finished. */
    void (*copies_wait)(us_backend *be);
    /* Compute issued after this waits until copy `ticket` (and every copy before it) has finished,
     * not for the copies issued after it (0: nothing to wait for). */
    void (*copy_wait)(us_backend *be, int ticket);

    /* ---- step graphs (optional: NULL where a backend runs ops as they come) ---- */
    /* A training step issues the same ops with the same arguments every time its batch shape and
     * scale repeat; a backend that can record them replays the record instead (CUDA graphs: no
     * launch overhead per kernel). graph_launch replays the step recorded under key (false: none);
     * graph_begin starts recording the ops issued next instead of running them (false: not
     * recording); graph_end stops, keeps the record under key and runs it (false: the recording
     * failed, nothing ran, later graph_begin calls refuse: issue the ops again). Any free drops
     * the record. */
    bool (*graph_launch)(us_backend *be, uint64_t key);
    bool (*graph_begin)(us_backend *be);
    bool (*graph_end)(us_backend *be, uint64_t key);

    /* ---- planning (optional: NULL means 0) ---- */
    /* Device bytes the backend allocates on its own (workspaces, accumulators) for a step of T
     * tokens of attention shape sh (NULL: the fixed part only), beyond what the model allocates.
     * Counted in mem_info's peak like every allocation. */
    size_t (*scratch_bytes)(us_backend *be, int T, const us_attn_shape *sh);
};

/* Creates a backend by name ("cpu", "cuda"); an error says when it is not compiled in or no
 * device is found. threads <= 0: the backend's default. */
us_status us_backend_create(const char *name, int threads, us_backend **out, us_err *e);
/* Space-separated names of the compiled backends, e.g. "cpu cuda". */
const char *us_backends_compiled(void);

us_status us_backend_cpu_create(int threads, us_backend **out, us_err *e);
/* Fills the CPU backend's incremental-decoding ops (cpu_decode.c). */
void us_cpu_decode_install(us_backend *be);
#ifdef US_HAVE_CUDA
us_status us_backend_cuda_create(us_backend **out, us_err *e);
#endif

#endif
