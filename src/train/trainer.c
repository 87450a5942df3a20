/* trainer.c — the training loop: validate everything, then plan, then step.
 *
 * Order matters for "lose nothing the user had": the model, adapter and data are all read and
 * checked, and the memory plan allocated, before anything is written; the adapter is written
 * only at the end, atomically. Batches take rows in order (--no-shuffle, wrapping around) or from
 * a per-epoch permutation drawn from the seed, one example per row or packed (train/batch.h);
 * positions and segment starts are uploaded with every micro-batch. Gradient accumulation divides
 * by the tokens counted over all micro-batches of the step, so k micro-batches equal one batch k
 * times larger. --epochs N sets the steps to N passes (exact for packing too); --val-split holds
 * out a seeded fraction of the examples as the eval set (eval loss and perplexity). */
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "data/load.h"
#include "data/tokens.h"
#include "io/adapter.h"
#include "model/model.h"
#include "train/batch.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/preflight.h"
#include "train/progress.h"
#include "train/report.h"

void us_train_opts_default(us_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->lora_r = 16;
    o->lora_alpha = 32;
    o->targets = (1u << US_T_COUNT) - 1;
    o->lr = 2e-4;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->grad_clip = 1.0;
    o->schedule = US_SCHED_COSINE;
    o->warmup = -1;
    o->grad_accum = 1;
    o->batch = 4;
    o->shuffle = true;
    o->seed = 42;
    o->init_std = 0.02f;
    o->keep = 3;
    o->max_skips = 5;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* --val-split: a seeded fraction of the examples moves to the eval set (at least one, and at
 * least one stays). Examples in a token-cache mapping stay owned by the training set (the eval
 * set is marked shared); examples in their own memory move with their ownership. */
static us_status split_validation(us_token_dataset *ds, us_token_dataset *ev, double frac, uint64_t seed, us_err *e) {
    size_t k = (size_t)(frac * (double)ds->n + 0.5);
    if (k == 0) k = 1;
    if (ds->n < 2 || k >= ds->n)
        return us_fail(e, US_EINVAL, "--val-split %g: %zu examples cannot give both a training and an eval set", frac, ds->n);
    size_t *perm = malloc(ds->n * sizeof *perm);
    bool *held = calloc(ds->n, 1);
    ev->ex = malloc(k * sizeof *ev->ex);
    if (!perm || !held || !ev->ex) {
        free(perm), free(held), free(ev->ex), ev->ex = NULL;
        return us_fail(e, US_ENOMEM, "out of memory for --val-split");
    }
    us_sampler s = {.n = ds->n, .perm = perm, .shuffle = true, .seed = seed ^ 0x5eed5011177ull};
    us_sampler_shuffle(&s);
    for (size_t i = 0; i < k; i++) held[perm[i]] = true;
    size_t w = 0;
    for (size_t i = 0; i < ds->n; i++) { /* both sets keep file order */
        if (held[i]) ev->ex[ev->n++] = ds->ex[i];
        else ds->ex[w++] = ds->ex[i];
    }
    ds->n = w;
    ev->cap = k;
    ev->shared = ds->map || ds->shared; /* tokens in the training set's mapping; else each set owns its own */
    free(perm);
    free(held);
    return US_OK;
}

static us_status check_out_dir(const char *dir, us_err *e) {
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) return us_fail(e, US_EINVAL, "--out %s: exists and is not a directory", dir);
    return US_OK;
}

typedef struct run_state {
    us_backend *be;
    us_model *m;
    us_token_dataset ds;
    FILE *metrics;
    float *adam_m, *adam_v;
    int32_t *d_ids, *d_targets, *d_pos, *d_seg;
    us_host_batch hb;
    size_t *perm;
    us_token_dataset eval_ds;
    double *hist; /* [5][steps]: step, loss, lr, tokens/s; eval step, eval loss interleaved */
    us_report *rep;
} run_state;

static void run_free(run_state *r) {
    if (r->metrics) fclose(r->metrics);
    if (r->be) {
        r->be->free(r->be, r->adam_m);
        r->be->free(r->be, r->adam_v);
        r->be->free(r->be, r->d_ids);
        r->be->free(r->be, r->d_targets);
        r->be->free(r->be, r->d_pos);
        r->be->free(r->be, r->d_seg);
    }
    us_model_free(r->m);
    if (r->be) r->be->destroy(r->be);
    us_token_dataset_free(&r->ds);
    free(r->hb.ids);
    free(r->hb.targets);
    free(r->hb.pos);
    free(r->hb.seg);
    free(r->perm);
    us_token_dataset_free(&r->eval_ds);
    free(r->hist);
    us_report_free(r->rep);
}

static us_status setup_spec(const us_train_opts *o, us_train_spec *spec, us_err *e) {
    memset(spec, 0, sizeof *spec);
    spec->full = o->full;
    spec->lora = (us_lora_config){.r = o->lora_r, .alpha = o->lora_alpha, .rslora = o->rslora, .targets = o->targets};
    if (o->full && o->adapter_init) return us_fail(e, US_EINVAL, "--full and --adapter-init cannot be combined");
    if (o->adapter_init) { /* the adapter's own config decides r, alpha, targets, rsLoRA */
        us_adapter *a;
        us_status st = us_adapter_open(o->adapter_init, &a, e);
        if (st) return st;
        spec->lora = *us_adapter_config(a);
        us_adapter_close(a);
    }
    return US_OK;
}

static us_status validate_opts(const us_train_opts *o, us_err *e) {
    if (!o->model_dir) return us_fail(e, US_EINVAL, "--model DIR is required");
    if (!o->data_path) return us_fail(e, US_EINVAL, "--data FILE is required");
    if (!o->out_dir) return us_fail(e, US_EINVAL, "--out DIR is required");
    if (o->batch < 1 || o->batch > 1 << 20) return us_fail(e, US_EINVAL, "--batch %d: must be at least 1", o->batch);
    if (o->grad_accum < 1) return us_fail(e, US_EINVAL, "--grad-accum %d: must be at least 1", o->grad_accum);
    if (o->steps < 0) return us_fail(e, US_EINVAL, "--steps %d: must not be negative", o->steps);
    if (o->seq_len < 0) return us_fail(e, US_EINVAL, "--seq-len %d: must be positive", o->seq_len);
    if (!(o->lr >= 0)) return us_fail(e, US_EINVAL, "--lr: must be a non-negative number");
    if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        return us_fail(e, US_EINVAL, "--beta1/--beta2: must lie in [0, 1)");
    if (!(o->eps > 0)) return us_fail(e, US_EINVAL, "--eps: must be positive");
    if (!(o->grad_clip >= 0)) return us_fail(e, US_EINVAL, "--grad-clip: must be >= 0 (0 turns clipping off)");
    if (!(o->weight_decay >= 0)) return us_fail(e, US_EINVAL, "--weight-decay: must be >= 0");
    if (o->save_every < 0) return us_fail(e, US_EINVAL, "--save-every %d: must not be negative", o->save_every);
    if (o->keep < 1) return us_fail(e, US_EINVAL, "--keep %d: must be at least 1", o->keep);
    if (o->max_skips < 0) return us_fail(e, US_EINVAL, "--max-skips %d: must not be negative", o->max_skips);
    if (o->epochs < 0) return us_fail(e, US_EINVAL, "--epochs %d: must not be negative", o->epochs);
    if (!(o->val_split >= 0 && o->val_split < 1)) return us_fail(e, US_EINVAL, "--val-split %g: must lie in [0, 1)", o->val_split);
    if (o->val_split > 0 && o->eval_data_path)
        return us_fail(e, US_EINVAL, "--val-split and --eval-data both give an eval set; pass one");
    return US_OK;
}

us_status us_train(const us_train_opts *o, us_err *e) {
    run_state r = {0};
    us_status st = validate_opts(o, e);
    if (!st) st = check_out_dir(o->out_dir, e);
    us_train_spec spec;
    if (!st) st = setup_spec(o, &spec, e);
    if (!st) st = us_backend_create(o->device, o->threads, &r.be, e);
    if (!st) st = us_model_load(&r.m, r.be, o->model_dir, o->random_init, o->init_std, o->seed, e);
    if (!st) st = us_model_setup_training(r.m, &spec, o->seed, e);
    if (!st && o->adapter_init) st = us_model_load_adapter(r.m, o->adapter_init, e);
    us_data_source src = {.model_dir = o->model_dir, .tokenizer = o->tokenizer_path, .vocab = st ? 0 : r.m->cfg.vocab,
                          .quiet = o->quiet, .opt = {.seq_len = o->seq_len, .refuse_long = o->refuse_long,
                                  .train_on_prompt = o->train_on_prompt, .chat_template = o->chat_template}};
    if (!st) src.path = o->data_path, st = us_data_load(&src, &r.ds, e);
    if (!st && o->eval_data_path) src.path = o->eval_data_path, st = us_data_load(&src, &r.eval_ds, e);
    if (!st && o->val_split > 0) st = split_validation(&r.ds, &r.eval_ds, o->val_split, o->seed, e);
    if (st) goto out;

    us_model *m = r.m;
    us_backend *be = r.be;
    int seq = o->seq_len;
    if (seq == 0)
        for (size_t i = 0; i < r.ds.n; i++) seq = (int)US_MAX((int64_t)seq, r.ds.ex[i].n);
    if (seq > m->cfg.max_pos && !o->extend_context) {
        st = us_fail(e, US_EINVAL,
                     "--seq-len %d exceeds the model's max_position_embeddings %d (--extend-context trains past it)",
                     seq, m->cfg.max_pos);
        goto out;
    }
    if (seq > m->cfg.max_pos && !o->quiet)
        fprintf(stderr, "unswag: --extend-context: %d tokens, past max_position_embeddings %d of %s/config.json\n",
                seq, m->cfg.max_pos, o->model_dir);
    if (m->cfg.sliding_window > 0 && seq > m->cfg.sliding_window) {
        st = us_fail(e, US_EUNSUPPORTED, "--seq-len %d exceeds the model's sliding_window %d (sliding-window attention is not supported)",
                     seq, m->cfg.sliding_window);
        goto out;
    }
    int B = o->batch, accum = o->grad_accum;
    double planned = 0;
    if (o->max_memory > 0) { /* the cheapest plan that fits: maybe smaller micro-batches, rebuilt MLPs */
        if ((st = us_fit_memory(m, seq, o->max_memory * 1073741824.0, o->offload_attn, &B, &accum, &planned, e)))
            goto out;
    } else {
        bool up = o->recompute == US_RECOMPUTE_UP; /* --recompute up[:K] */
        us_memory_mode mm = {.recompute = up ? US_RECOMPUTE_NONE : o->recompute,
                             .mlp_layers = up ? 0 : o->recompute_layers,
                             .up_layers = up ? (o->recompute_layers ? o->recompute_layers : m->cfg.layers) : 0,
                             .offload_mlp = o->offload_mlp,
                             .keep_attn = o->keep_attn,
                             .offload_attn = o->offload_attn,
                             .embed_host = o->offload_embed,
                             .offload = o->offload};
        if ((st = us_model_set_memory_mode(m, &mm, e))) goto out;
    }
    int T = (int)US_MIN((int64_t)B * seq, (int64_t)INT32_MAX); /* preflight refuses huge T */
    if (!(r.perm = malloc(r.ds.n * sizeof *r.perm))) {
        st = us_fail(e, US_ENOMEM, "out of memory");
        goto out;
    }
    us_sampler smp = {.n = r.ds.n, .perm = r.perm, .shuffle = o->shuffle, .seed = o->seed};
    if (smp.shuffle) us_sampler_shuffle(&smp);
    int steps = o->steps ? o->steps
                         : us_steps_for_epochs(&r.ds, &smp, o->epochs ? o->epochs : 1, B, accum, seq, o->packing);
    if (steps < 1) {
        st = us_fail(e, US_ENOMEM, "out of memory counting packed rows");
        goto out;
    }
    int warmup = o->warmup >= 0 ? o->warmup : (int)ceil(0.03 * steps); /* transformers' warmup_ratio rounds up */
    if ((st = us_preflight_memory(m, B, seq, accum, e))) goto out;
    if ((st = us_model_prepare(m, T, e))) goto out;
    if (!o->quiet) {
        fprintf(stderr, "unswag: %s, %d layers, hidden %d, vocab %d on %s; %s; %zu trainable parameters\n", m->cfg.arch,
                m->cfg.layers, m->cfg.hidden, m->cfg.vocab, be->name, spec.full ? "full fine-tuning" : "LoRA",
                m->n_params);
        fprintf(stderr, "unswag: %zu examples%s, batch %d x %d tokens (%s), grad-accum %d, %d steps%s\n", r.ds.n,
                o->val_split > 0 ? " (the rest held out for eval)" : "", B, seq, o->packing ? "packed" : "padded",
                accum, steps, o->steps || !o->epochs ? "" : " (--epochs)");
        if (o->max_memory > 0) {
            char mode[256];
            us_memory_mode_describe(m, mode, sizeof mode);
            fprintf(stderr, "unswag: --max-memory %.4g GiB: micro-batch %d x grad-accum %d, %s (planned %.4g GiB)\n",
                    o->max_memory, B, accum, mode, planned / 1073741824.0);
        }
        us_plan_print(m, stderr);
    }
    r.adam_m = be->alloc(be, m->n_params * 4);
    r.adam_v = be->alloc(be, m->n_params * 4);
    r.d_ids = be->alloc(be, (size_t)T * 4);
    r.d_targets = be->alloc(be, (size_t)T * 4);
    r.d_pos = be->alloc(be, (size_t)T * 4);
    r.d_seg = o->packing ? be->alloc(be, (size_t)T * 4) : NULL;
    r.hb.ids = malloc((size_t)T * 4 * (size_t)accum);
    r.hb.targets = malloc((size_t)T * 4 * (size_t)accum);
    r.hb.pos = malloc((size_t)T * 4 * (size_t)accum);
    r.hb.seg = o->packing ? malloc((size_t)T * 4 * (size_t)accum) : NULL;
    if (!r.adam_m || !r.adam_v || !r.d_ids || !r.d_targets || !r.d_pos || !r.hb.ids || !r.hb.targets || !r.hb.pos ||
        (o->packing && (!r.d_seg || !r.hb.seg))) {
        st = us_fail(e, US_ENOMEM, "out of memory for optimizer state and batches");
        goto out;
    }
    be->zero(be, r.adam_m, m->n_params * 4);
    be->zero(be, r.adam_v, m->n_params * 4);
    /* output preflight, then a resume or a fresh start (train/checkpoint.h) */
    us_ckpt_run ck = {.o = o, .m = m, .adam_m = r.adam_m, .adam_v = r.adam_v, .steps = steps, .seq = seq,
                      .warmup = warmup, .n_examples = r.ds.n};
    us_ckpt_state cs = {.metrics_bytes = -1};
    bool resumed = false, ckpts = o->save_every > 0 || o->resume;
    char ck_dir[4200] = "";
    uint64_t final_bytes = (uint64_t)m->n_params * 4 + (1 << 16);
    if (!o->resume && ckpts) st = us_ckpt_check_fresh(o->out_dir, e);
    if (!st) st = us_preflight_out_dir(o->out_dir, final_bytes + (ckpts ? (uint64_t)(o->keep + 1) * us_ckpt_bytes(m) : 0),
                                       ckpts ? "the adapter and --keep + 1 checkpoints" : "the adapter", e);
    if (!st && o->resume) st = us_ckpt_resume(&ck, &cs, &resumed, ck_dir, sizeof ck_dir, e);
    if (!st && o->metrics_path) st = us_metrics_open(o->metrics_path, resumed ? cs.metrics_bytes : -1, &r.metrics, e);
    if (st) goto out;
    ck.metrics = r.metrics;
    if (resumed && !o->quiet) fprintf(stderr, "unswag: resuming from %s (step %d of %d)\n", ck_dir, cs.step, steps);
    smp.epoch = cs.epoch, smp.cursor = cs.cursor;
    if (smp.shuffle) us_sampler_shuffle(&smp);
    us_batch batch = {.batch = B, .seq = seq, .ids = r.d_ids, .targets = r.d_targets, .pos = r.d_pos, .seg_start = r.d_seg};
    int skipped = cs.skipped, consec = cs.consec_skipped;
    double t_start = now_s();
    us_progress prog;
    us_progress_init(&prog, stderr, steps, o->quiet, -1);
    int n_hist = 0, n_eval = 0, eval_every = o->eval_every > 0 ? o->eval_every : US_MAX(1, steps / 10);
    if (!(r.hist = calloc((size_t)steps * 6 + 12, sizeof *r.hist))) {
        st = us_fail(e, US_ENOMEM, "out of memory");
        goto out;
    }
    double *h_x = r.hist, *h_loss = h_x + steps, *h_lr = h_loss + steps, *h_tps = h_lr + steps;
    double *h_ex = h_tps + steps, *h_ey = h_ex + steps + 6;
    for (int step = cs.step; step < steps; step++) {
        double t0 = now_s();
        /* draw the step's micro-batches first: the loss is normalised by all their tokens */
        long counted = 0;
        for (int k = 0; k < accum; k++) {
            size_t at = (size_t)k * T;
            us_host_batch hb = {r.hb.ids + at, r.hb.targets + at, r.hb.pos + at, r.hb.seg ? r.hb.seg + at : NULL, 0, 0};
            us_fill_batch(&hb, &r.ds, &smp, B, seq, o->packing);
            counted += hb.counted;
        }
        float scale = counted ? 1.0f / (float)counted : 0.0f;
        be->zero(be, m->grads, m->n_params * 4);
        double loss_sum = 0;
        for (int k = 0; k < accum; k++) {
            be->upload(be, r.d_ids, r.hb.ids + (size_t)k * T, (size_t)T * 4);
            be->upload(be, r.d_targets, r.hb.targets + (size_t)k * T, (size_t)T * 4);
            be->upload(be, r.d_pos, r.hb.pos + (size_t)k * T, (size_t)T * 4);
            if (r.d_seg) be->upload(be, r.d_seg, r.hb.seg + (size_t)k * T, (size_t)T * 4);
            double ls;
            if ((st = us_model_step(m, &batch, scale, &ls, e))) goto out;
            loss_sum += ls;
        }
        double loss = counted ? loss_sum / counted : 0.0;
        double norm = sqrt(be->sumsq(be, m->grads, m->n_params));
        double lr = us_lr_at(o->schedule, o->lr, step, warmup, steps);
        if (!isfinite(norm) || !isfinite(loss) || counted == 0) {
            skipped++;
            if (counted) consec++;
            char note[160];
            snprintf(note, sizeof note, "unswag: step %d: %s; update skipped (%d so far)", step + 1,
                     counted ? "non-finite loss or gradient" : "no counted tokens", skipped);
            us_progress_note(&prog, note);
        } else {
            consec = 0;
            if (o->grad_clip > 0 && norm > o->grad_clip) be->scale(be, m->grads, m->n_params, (float)(o->grad_clip / (norm + 1e-6)));
            int t = step + 1 - skipped;
            be->adamw(be, m->params, m->grads, r.adam_m, r.adam_v, m->n_params, (float)lr, (float)o->beta1,
                      (float)o->beta2, (float)o->eps, (float)o->weight_decay, (float)(1 - pow(o->beta1, t)),
                      (float)(1 - pow(o->beta2, t)));
            if (spec.full) us_model_sync_weights(m);
        }
        be->sync(be);
        double dt = now_s() - t0, tps = (double)T * accum / dt;
        if (r.metrics) {
            fprintf(r.metrics, "{\"step\": %d, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": %.1f, \"tokens\": %ld, \"time_s\": %.4f}\n",
                    step + 1, loss, lr, norm, tps, counted, now_s() - t_start);
            fflush(r.metrics);
        }
        /* numerical faults, checkpoints and signals (train/checkpoint.h) */
        if (o->max_skips > 0 && consec >= o->max_skips) {
            char last[4200];
            int last_step;
            bool have = us_ckpt_newest(o->out_dir, last, sizeof last, &last_step);
            st = us_fail(e, US_EINVAL,
                         "%d updates in a row had a non-finite loss or gradient (steps %d-%d); stopping (--max-skips %d). "
                         "%s%s%s Check the model weights and the data for NaN/Inf, lower --lr, keep --grad-clip on.",
                         consec, step + 2 - consec, step + 1, o->max_skips,
                         have ? "The last good checkpoint is " : "No checkpoint was written (see --save-every).",
                         have ? last : "", have ? ", left intact (continue from it with --resume)." : "");
            goto out;
        }
        bool stop_now = o->stop && *o->stop;
        if (stop_now || (o->save_every > 0 && ((step + 1) % o->save_every == 0 || step + 1 == steps))) {
            if (r.metrics) fflush(r.metrics);
            cs = (us_ckpt_state){.step = step + 1, .skipped = skipped, .consec_skipped = consec, .epoch = smp.epoch,
                                 .cursor = smp.cursor, .metrics_bytes = r.metrics ? (int64_t)ftell(r.metrics) : -1};
            if ((st = us_ckpt_save(&ck, &cs, ck_dir, sizeof ck_dir, e))) goto out;
            if (stop_now) {
                fprintf(stderr, "\nunswag: stopped by a signal after step %d of %d; saved %s and the adapter in %s\n"
                                "unswag: to continue, run the same command with --resume\n",
                        step + 1, steps, ck_dir, o->out_dir);
                goto out;
            }
        }
        size_t mem_in_use = 0;
        be->mem_info(be, &mem_in_use, NULL, NULL);
        us_progress_step(&prog, step + 1, loss, lr, tps, mem_in_use);
        h_x[n_hist] = step + 1, h_loss[n_hist] = loss, h_lr[n_hist] = lr, h_tps[n_hist++] = tps;
        if (r.eval_ds.n && ((step + 1) % eval_every == 0 || step + 1 == steps || step == 0) && n_eval < steps + 6) {
            double ls;
            long cnt;
            if ((st = us_eval_dataset(m, &r.eval_ds, B, seq, NULL, &ls, &cnt, e))) goto out;
            h_ex[n_eval] = step + 1, h_ey[n_eval++] = cnt ? ls / cnt : 0;
            double el = cnt ? ls / cnt : 0;
            if (r.metrics)
                fprintf(r.metrics, "{\"step\": %d, \"eval_loss\": %.9g, \"eval_perplexity\": %.9g, \"eval_tokens\": %ld}\n",
                        step + 1, el, exp(el), cnt);
            if (!o->quiet) {
                char note[160];
                snprintf(note, sizeof note, "eval at step %d: loss %.4f, perplexity %.3f over %ld tokens", step + 1, el,
                         exp(el), cnt);
                us_progress_note(&prog, note);
            }
        }
    }
    us_progress_end(&prog);
    if (spec.full)
        st = us_model_save_full(m, o->out_dir, o->model_dir, e);
    else
        st = us_model_save_adapter(m, o->out_dir, o->model_dir, e);
    if (!st && !o->quiet) {
        size_t peak;
        be->mem_info(be, NULL, &peak, NULL);
        fprintf(stderr, "unswag: wrote %s to %s (%.1f s, peak %s memory %.1f MiB)\n", spec.full ? "model" : "adapter",
                o->out_dir, now_s() - t_start, be->name, peak / 1048576.0);
    }
    if (!st && (o->report_path || o->report)) {
        us_report *rep = o->report;
        if (!rep) rep = r.rep = us_report_new(o->run_name ? o->run_name : "unswag train");
        us_train_opts eff = *o;
        eff.warmup = warmup;
        eff.eval_every = eval_every;
        us_report_add_run(rep, o->run_name ? o->run_name : "training", &eff, m, h_x, h_loss, h_lr, h_tps, n_hist, h_ex,
                          h_ey, n_eval);
        if (o->report_path && (st = us_report_write(rep, o->report_path, e))) goto out;
        if (o->report_path && !o->quiet) fprintf(stderr, "unswag: report written to %s\n", o->report_path);
    }
out:
    run_free(&r);
    return st;
}
