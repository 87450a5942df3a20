/* cmd_demo.c — `unswag demo`: the whole product in a couple of minutes, nothing downloaded.
 *
 * 1. A small Llama-architecture model is described (config.json written here) and pretrained
 *    from random weights with full fine-tuning (the trainer's --full --random-init path) on a
 *    synthetic token language made in-process: "OP d1..d6 = r1..r6 ." where OP is C (copy the
 *    digits) or S (each digit plus one, mod 10). The loss counts only the answer.
 * 2. A NEW task, N (each digit's nines' complement, 9 - d), is one the pretrained model has
 *    never seen: greedy decoding (src/model/decode.c, KV cache) on held-out N examples gives
 *    ~0% exact matches. LoRA fine-tuning (r 16 on all projections, the library defaults except
 *    the learning rate) on N examples mixed with a few of the old tasks then lifts it close to
 *    100% — the adapter reuses the alignment the base learned and adds the new digit map.
 * 3. Printed: both loss curves (ASCII), the accuracies before and after, a few held-out
 *    predictions, the memory plan (saved bytes per token vs store-everything, printed by the
 *    trainer), and where the model, adapter, data and HTML report were written.
 * Everything goes through the library (us_train, us_model_load, us_decoder); the corpora are
 * also written as JSONL so `unswag train/eval/generate` can be pointed at them afterwards.
 * The same token language gets a tiny tokenizer.json, so `unswag generate --prompt "N123456="`
 * works on the demo model when the tokenizer is compiled in. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/demo.h"
#include "io/safetensors.h"
#include "model/decode.h"
#include "model/model.h"
#include "train/progress.h"
#include "train/report.h"
#include "train/trainer.h"

/* the token language */
enum { TOK_EQ = 10, TOK_END = 11, TOK_C = 12, TOK_S = 13, TOK_N = 14, TOK_PAD = 15, VOCAB = 16 };
static const char TOK_CH[VOCAB + 1] = "0123456789=.CSN_";
#define DIGITS 6
#define LEN (1 + DIGITS + 1 + DIGITS + 1)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int apply_op(int op, int d) {
    switch (op) {
    case TOK_C: return d;
    case TOK_S: return (d + 1) % 10;
    default: return 9 - d;
    }
}

/* example number i of a stream: deterministic from (seed, stream, i) */
static void make_example(uint64_t seed, uint64_t stream, uint64_t i, int op, int32_t *ids) {
    ids[0] = op;
    for (int k = 0; k < DIGITS; k++) {
        int d = (int)(us_rand_uniform(seed, stream, i * DIGITS + k) * 10);
        ids[1 + k] = d > 9 ? 9 : d;
        ids[2 + DIGITS + k] = apply_op(op, ids[1 + k]);
    }
    ids[1 + DIGITS] = TOK_EQ;
    ids[LEN - 1] = TOK_END;
}

static void show(char *buf, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) buf[i] = (ids[i] >= 0 && ids[i] < VOCAB) ? TOK_CH[ids[i]] : '?';
    buf[n] = 0;
}

/* n examples, op chosen per row from ops[] (round robin); labels only on the answer */
static us_status write_corpus(const char *path, uint64_t seed, uint64_t stream, int n, const int *ops, int n_ops,
                              us_err *e) {
    FILE *f = fopen(path, "w");
    if (!f) return us_fail(e, US_EIO, "%s: cannot create: %s", path, strerror(errno));
    for (int i = 0; i < n; i++) {
        int32_t ids[LEN];
        make_example(seed, stream, (uint64_t)i, ops[i % n_ops], ids);
        fputs("{\"input_ids\": [", f);
        for (int k = 0; k < LEN; k++) fprintf(f, k ? ", %d" : "%d", ids[k]);
        fputs("], \"labels\": [", f);
        for (int k = 0; k < LEN; k++) fprintf(f, k ? ", %d" : "%d", k > 1 + DIGITS ? ids[k] : -100);
        fputs("]}\n", f);
    }
    if (fclose(f) != 0) return us_fail(e, US_EIO, "%s: write failed", path);
    return US_OK;
}

static us_status write_text(const char *path, const char *text, us_err *e) {
    return us_write_file_atomic(path, text, strlen(text), e);
}

static us_status write_model_files(const char *dir, us_err *e) {
    char p[4096 + 64];
    snprintf(p, sizeof p, "%s/config.json", dir);
    us_status st = write_text(p,
                              "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
                              "  \"vocab_size\": 16,\n  \"hidden_size\": 128,\n  \"intermediate_size\": 256,\n"
                              "  \"num_hidden_layers\": 2,\n  \"num_attention_heads\": 4,\n  \"num_key_value_heads\": 2,\n"
                              "  \"head_dim\": 32,\n  \"hidden_act\": \"silu\",\n  \"max_position_embeddings\": 64,\n"
                              "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n  \"tie_word_embeddings\": true,\n"
                              "  \"bos_token_id\": null,\n  \"eos_token_id\": 11,\n  \"torch_dtype\": \"float32\"\n}\n",
                              e);
    if (st) return st;
    /* a character-level tokenizer for the token language (BPE with no merges) */
    char vocab[1024] = "", one[64];
    for (int i = 0; i < VOCAB; i++) {
        snprintf(one, sizeof one, "%s\"%c\": %d", i ? ", " : "", TOK_CH[i], i);
        strcat(vocab, one);
    }
    char tok[4096];
    snprintf(tok, sizeof tok,
             "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [],\n"
             " \"normalizer\": null, \"pre_tokenizer\": null, \"post_processor\": null, \"decoder\": {\"type\": \"Fuse\"},\n"
             " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null,\n"
             "  \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n"
             "  \"vocab\": {%s}, \"merges\": []}}\n",
             vocab);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    if ((st = write_text(p, tok, e))) return st;
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    return write_text(p, "{\"eos_token\": \".\", \"pad_token\": \"_\", \"model_max_length\": 64}\n", e);
}

/* exact-match accuracy of greedy decoding on n held-out examples of op (stream differs from training) */
static us_status accuracy(const char *model_dir, const char *adapter, const char *device, int threads, uint64_t seed,
                          int op, int n, double *acc, char samples[][2][LEN + 1], int n_samples, us_err *e) {
    us_backend *be = NULL;
    us_model *m = NULL;
    us_decoder *d = NULL;
    us_status st = us_backend_create(device, threads, &be, e);
    if (!st) st = us_model_load(&m, be, model_dir, false, 0, 0, e);
    if (!st && adapter) {
        us_train_spec spec = {0};
        us_adapter *a;
        st = us_adapter_open(adapter, &a, e);
        if (!st) {
            spec.lora = *us_adapter_config(a);
            us_adapter_close(a);
            st = us_model_setup_training(m, &spec, 0, e);
        }
        if (!st) st = us_model_load_adapter(m, adapter, e);
    }
    if (!st) st = us_decoder_create(m, LEN, &d, e);
    int correct = 0;
    float logits[VOCAB];
    for (int i = 0; i < n && !st; i++) {
        int32_t ex[LEN], got[LEN];
        make_example(seed, 999 + (uint64_t)op, (uint64_t)i, op, ex);
        memcpy(got, ex, sizeof got);
        us_decoder_reset(d);
        st = us_decoder_feed(d, ex, 2 + DIGITS, logits, e);
        bool ok = true;
        for (int k = 2 + DIGITS; k < LEN && !st; k++) {
            got[k] = us_argmax(logits, VOCAB);
            ok = ok && got[k] == ex[k];
            if (k + 1 < LEN) st = us_decoder_feed(d, &got[k], 1, logits, e);
        }
        correct += ok;
        if (i < n_samples) {
            show(samples[i][0], ex, LEN);
            show(samples[i][1], got, LEN);
        }
    }
    *acc = n ? (double)correct / n : 0;
    us_decoder_free(d);
    us_model_free(m);
    if (be) be->destroy(be);
    return st;
}

static us_status mkdir_p(const char *dir, us_err *e) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0777);
            *p = '/';
        }
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return us_fail(e, US_EIO, "%s: cannot create: %s", dir, strerror(errno));
    return US_OK;
}

/* loss per step from a metrics file the trainer wrote */
static int read_losses(const char *path, double *loss, int cap) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\": ");
        if (p) loss[n++] = strtod(p + 8, NULL);
    }
    fclose(f);
    return n;
}

static const char *pick_device(const char *want, int threads) {
    if (strcmp(want, "auto")) return want;
    us_backend *be;
    us_err e;
    if (strstr(us_backends_compiled(), "cuda") && !us_backend_create("cuda", threads, &be, &e)) {
        be->destroy(be);
        return "cuda";
    }
    return "cpu";
}

us_status us_demo_run(const us_demo_opts *o, us_demo_result *r, us_err *e) {
    memset(r, 0, sizeof *r);
    FILE *out = o->quiet ? NULL : stdout; /* quiet: nothing printed at all */
#define SAY(...) (out ? fprintf(out, __VA_ARGS__) : 0)
    double t0 = now_s();
    const char *dev = pick_device(o->device ? o->device : "auto", o->threads);
    char base[4096], pre[4096], ada[4096], data_pre[4096], data_ft[4096], m_pre[4096], m_ft[4096], report[4096];
    char ev_pre[4096], ev_ft[4096];
    snprintf(ev_pre, sizeof ev_pre, "%s/pretrain_eval.jsonl", o->out_dir);
    snprintf(ev_ft, sizeof ev_ft, "%s/finetune_eval.jsonl", o->out_dir);
    snprintf(base, sizeof base, "%s/base", o->out_dir);
    snprintf(pre, sizeof pre, "%s/pretrained", o->out_dir);
    snprintf(ada, sizeof ada, "%s/adapter", o->out_dir);
    snprintf(data_pre, sizeof data_pre, "%s/pretrain.jsonl", o->out_dir);
    snprintf(data_ft, sizeof data_ft, "%s/finetune.jsonl", o->out_dir);
    snprintf(m_pre, sizeof m_pre, "%s/pretrain_metrics.jsonl", o->out_dir);
    snprintf(m_ft, sizeof m_ft, "%s/finetune_metrics.jsonl", o->out_dir);
    snprintf(report, sizeof report, "%s/report.html", o->out_dir);
    us_status st = mkdir_p(base, e);
    if (!st) st = write_model_files(base, e);
    int pre_steps = o->quick ? 100 : 300, ft_steps = o->quick ? 50 : 150, held = o->quick ? 50 : 200;
    int pre_ops[] = {TOK_C, TOK_S}, ft_ops[] = {TOK_N, TOK_N, TOK_N, TOK_C, TOK_N, TOK_N, TOK_N, TOK_S};
    if (!st) st = write_corpus(data_pre, o->seed, 1, 8192, pre_ops, 2, e);
    if (!st) st = write_corpus(data_ft, o->seed, 2, 2048, ft_ops, 8, e);
    /* held-out rows for the eval-loss curves: streams the training rows never use */
    int n_ops[] = {TOK_N};
    if (!st) st = write_corpus(ev_pre, o->seed, 3, 64, pre_ops, 2, e);
    if (!st) st = write_corpus(ev_ft, o->seed, 4, 64, n_ops, 1, e);
    if (st) return st;
    us_report *rep = us_report_new("unswag demo: pretraining a tiny Llama, then teaching it a new task with LoRA");
    if (!rep) return us_fail(e, US_ENOMEM, "out of memory");
    SAY("unswag demo: a tiny Llama (2 layers, hidden 128, GQA 4/2 heads, vocab %d) on %s\n", VOCAB, dev);
    SAY("  token language: \"OP d1..d6 = r1..r6 .\"   C copies, S adds one to each digit;\n"
           "  the new task N (nines' complement, 9-d) is never seen in pretraining.\n\n");
    if (out) fflush(out);

    /* 1. pretrain from random weights, every weight trains */
    us_train_opts t;
    us_train_opts_default(&t);
    t.model_dir = base;
    t.data_path = data_pre;
    t.out_dir = pre;
    t.metrics_path = m_pre;
    t.device = dev;
    t.threads = o->threads;
    t.random_init = true;
    t.full = true;
    t.init_std = 0.02f;
    t.lr = 3e-3;
    t.warmup = pre_steps / 10;
    t.weight_decay = 0.0;
    t.steps = pre_steps;
    t.batch = 32;
    t.seed = o->seed;
    t.quiet = o->quiet;
    t.eval_data_path = ev_pre;
    t.report = rep;
    t.run_name = "pretraining";
    SAY("== 1/3 pretraining from scratch (--full, %d steps) ==\n", pre_steps);
    if (out) fflush(out);
    if ((st = us_train(&t, e))) goto done;
    char samples[4][2][LEN + 1];
    double acc_c, acc_s;
    if ((st = accuracy(pre, NULL, dev, o->threads, o->seed, TOK_C, held / 2, &acc_c, samples, 0, e))) goto done;
    if ((st = accuracy(pre, NULL, dev, o->threads, o->seed, TOK_S, held / 2, &acc_s, samples, 0, e))) goto done;
    r->pre_acc = (acc_c + acc_s) / 2;
    SAY("pretrained model on held-out C and S examples: %.0f%% and %.0f%% exact\n\n", 100 * acc_c, 100 * acc_s);

    /* 2. the new task before fine-tuning */
    char before[4][2][LEN + 1], after[4][2][LEN + 1];
    if ((st = accuracy(pre, NULL, dev, o->threads, o->seed, TOK_N, held, &r->acc_before, before, 4, e))) goto done;
    SAY("== 2/3 the new task N before fine-tuning: %.1f%% of %d held-out examples exact ==\n", 100 * r->acc_before,
           held);
    for (int i = 0; i < 3; i++) SAY("  want %s   got %s\n", before[i][0], before[i][1]);
    SAY("\n");

    /* 3. LoRA fine-tuning on N */
    us_train_opts_default(&t);
    t.model_dir = pre;
    t.data_path = data_ft;
    t.out_dir = ada;
    t.metrics_path = m_ft;
    t.device = dev;
    t.threads = o->threads;
    t.lr = 2e-3;
    t.steps = ft_steps;
    t.batch = 32;
    t.seed = o->seed;
    t.quiet = o->quiet;
    t.eval_data_path = ev_ft;
    t.report = rep;
    t.run_name = "LoRA on task N";
    SAY("== 3/3 LoRA fine-tuning on N (r %d, alpha %.0f, all projections, %d steps) ==\n", t.lora_r, t.lora_alpha,
           ft_steps);
    if (out) fflush(out);
    if ((st = us_train(&t, e))) goto done;
    if ((st = accuracy(pre, ada, dev, o->threads, o->seed, TOK_N, held, &r->acc_after, after, 4, e))) goto done;
    r->held_out = held;

    double lp[4096], lf[4096];
    int np = read_losses(m_pre, lp, 4096), nf = read_losses(m_ft, lf, 4096);
    if (np) r->loss_pre_first = lp[0], r->loss_pre_last = lp[np - 1];
    if (nf) r->loss_ft_first = lf[0], r->loss_ft_last = lf[nf - 1];
    SAY("\n");
    if (out) us_ascii_plot(out, "pretraining loss (answer tokens)", lp, np, 64, 10);
    if (out) us_ascii_plot(out, "LoRA fine-tuning loss on N", lf, nf, 64, 10);
    SAY("\nthe new task N after fine-tuning: %.1f%% of %d held-out examples exact (before: %.1f%%)\n",
           100 * r->acc_after, held, 100 * r->acc_before);
    for (int i = 0; i < 3; i++) SAY("  want %s   got %s\n", after[i][0], after[i][1]);
    r->seconds = now_s() - t0;
    {
        char txt[2048];
        int k = snprintf(txt, sizeof txt,
                         "Task N (nines' complement of each digit), never seen in pretraining; %d held-out examples, "
                         "greedy decoding, exact match.\n  before LoRA fine-tuning: %5.1f%%\n  after  LoRA fine-tuning: "
                         "%5.1f%%\n  (pretrained model on its own tasks C and S: %.0f%% / %.0f%%)\n\n",
                         held, 100 * r->acc_before, 100 * r->acc_after, 100 * acc_c, 100 * acc_s);
        for (int i = 0; i < 3 && k > 0 && k < (int)sizeof txt; i++)
            k += snprintf(txt + k, sizeof txt - (size_t)k, "want %s   before %s   after %s\n", before[i][0], before[i][1],
                          after[i][1]);
        us_report_note(rep, "Held-out accuracy on the new task", txt);
        us_report_param(rep, "demo", "device", "%s", dev);
        us_report_param(rep, "demo", "wall time", "%.1f s", r->seconds);
        if ((st = us_report_write(rep, report, e))) goto done;
    }
    SAY("\nwritten under %s:\n  base/ (config.json, tokenizer.json)   pretrained/ (model.safetensors)\n"
           "  adapter/ (PEFT LoRA adapter)   pretrain.jsonl, finetune.jsonl (+ _eval: held out), *_metrics.jsonl\n",
           o->out_dir);
    SAY("try:  build/unswag generate --model %s --adapter %s --prompt-ids 14,3,1,4,1,5,9,10\n", pre, ada);
    SAY("demo finished in %.1f s\n", r->seconds);
    SAY("report: %s\n", report);
done:
    us_report_free(rep);
    return st;
#undef SAY
}

static const char *usage =
    "usage: unswag demo [--out DIR] [--quick] [--device auto|cpu|cuda] [--threads N] [--seed N] [--quiet]\n"
    "\n"
    "Builds a tiny Llama-architecture model, pretrains it from scratch on a synthetic token\n"
    "language, then LoRA-fine-tunes it on a task it has never seen, and shows the loss curves, the\n"
    "held-out accuracy before and after, the memory plan, and an HTML report. Nothing is downloaded.\n"
    "\n"
    "  --out DIR     where everything is written (build/demo)\n"
    "  --quick       a shorter setting (as the tests run it)\n"
    "  --device D    auto (default: cuda when it works, else cpu), cpu or cuda\n"
    "  --threads N   CPU threads (1: the model is tiny)   --seed N (1234)   --quiet (print nothing)\n"
    "\n"
    "example:\n"
    "  unswag demo --out /tmp/demo\n";

int cmd_demo(int argc, char **argv) {
    /* one thread by default: at this model size OpenMP's fork/join costs more than it saves */
    us_demo_opts o = {.out_dir = "build/demo", .device = "auto", .seed = 1234, .threads = 1};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--out")) { if (!(v = us_arg_value(argc, argv, &i))) return 2; o.out_dir = v; }
        else if (!strcmp(a, "--device")) { if (!(v = us_arg_value(argc, argv, &i))) return 2; o.device = v; }
        else if (!strcmp(a, "--threads")) { if (!(v = us_arg_value(argc, argv, &i)) || !us_arg_int(a, v, 1, 4096, &o.threads)) return 2; }
        else if (!strcmp(a, "--seed")) { if (!(v = us_arg_value(argc, argv, &i)) || !us_arg_u64(a, v, &o.seed)) return 2; }
        else if (!strcmp(a, "--quick")) o.quick = true;
        else if (!strcmp(a, "--quiet")) o.quiet = true;
        else {
            fprintf(stderr, "unswag demo: unknown option %s (see unswag demo --help)\n", a);
            return 2;
        }
    }
    us_demo_result r;
    us_err e = {{0}};
    if (us_demo_run(&o, &r, &e)) {
        fprintf(stderr, "unswag demo: error: %s\n", e.msg);
        return 1;
    }
    return 0;
}
