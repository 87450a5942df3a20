/* cmd_eval.c — `unswag eval`: loss and perplexity of a model (+ adapter) over a dataset.
 *
 * Forward only (us_eval_dataset): no gradients, no optimizer state. The data goes through the
 * same loader as training (pre-tokenized JSONL as is; text formats through the model's
 * tokenizer), rows cut to --seq-len, the loss counted where labels are not -100, shifted as in
 * training. --logits-out writes every row's logits [rows, seq, vocab] as one F32 safetensors
 * tensor "logits" — what the GPU machine compares with PEFT. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/load.h"
#include "io/safetensors.h"
#include "model/decode.h"
#include "train/evaluate.h"

static const char *usage =
    "usage: unswag eval --model DIR --data FILE [--adapter DIR] [options]\n"
    "\n"
    "Loss and perplexity of a Hugging Face model, with or without a PEFT LoRA adapter, over a\n"
    "dataset (the formats `unswag train` reads; pre-tokenized {\"input_ids\", \"labels\"} JSONL as is).\n"
    "\n"
    "  --model DIR              Hugging Face model directory\n"
    "  --adapter DIR            PEFT LoRA adapter applied in the forward\n"
    "  --data FILE              the rows to score\n"
    "  --batch N (8)            rows per forward\n"
    "  --seq-len N              tokens per row (longest row; longer rows are cut)\n"
    "  --extend-context         allow --seq-len past max_position_embeddings (as train's)\n"
    "  --logits-out FILE        write the logits [rows, seq, vocab] as F32 safetensors (\"logits\")\n"
    "  --device cpu|cuda  --threads N\n"
    "\n"
    "examples:\n"
    "  unswag eval --model ./SmolLM2-135M --data val.jsonl\n"
    "  unswag eval --model ./SmolLM2-135M --adapter ./adapter --data val.jsonl --logits-out logits.safetensors\n";

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *data = NULL, *logits_out = NULL, *device = "cpu";
    int batch = 8, seq = 0, threads = 0;
    bool extend = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
#define VAL() (v = us_arg_value(argc, argv, &i))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--model")) { if (!VAL()) return 2; model = v; }
        else if (!strcmp(a, "--adapter")) { if (!VAL()) return 2; adapter = v; }
        else if (!strcmp(a, "--data")) { if (!VAL()) return 2; data = v; }
        else if (!strcmp(a, "--logits-out")) { if (!VAL()) return 2; logits_out = v; }
        else if (!strcmp(a, "--device")) { if (!VAL()) return 2; device = v; }
        else if (!strcmp(a, "--batch")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 20, &batch)) return 2; }
        else if (!strcmp(a, "--seq-len")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 24, &seq)) return 2; }
        else if (!strcmp(a, "--extend-context")) extend = true;
        else if (!strcmp(a, "--threads")) { if (!VAL() || !us_arg_int(a, v, 1, 4096, &threads)) return 2; }
        else {
            fprintf(stderr, "unswag eval: unknown option %s (see unswag eval --help)\n", a);
            return 2;
        }
#undef VAL
    }
    if (!model || !data) {
        fprintf(stderr, "unswag eval: --model DIR and --data FILE are required (see unswag eval --help)\n");
        return 2;
    }
    us_err e = {{0}};
    us_backend *be = NULL;
    us_model *m = NULL;
    us_token_dataset ds = {0};
    float *logits = NULL;
    us_status st = us_backend_create(device, threads, &be, &e);
    if (!st) st = us_model_load_inference(&m, be, model, adapter, &e);
    if (!st) {
        us_data_source src = {.path = data, .model_dir = model, .vocab = m->cfg.vocab};
        src.opt.seq_len = seq;
        st = us_data_load(&src, &ds, &e);
    }
    if (!st && seq == 0)
        for (size_t i = 0; i < ds.n; i++) seq = (int)US_MAX((int64_t)seq, ds.ex[i].n);
    if (!st && seq > m->cfg.max_pos && !extend)
        st = us_fail(&e, US_EINVAL, "--seq-len %d exceeds the model's max_position_embeddings %d (--extend-context allows it)",
                     seq, m->cfg.max_pos);
    if (!st) {
        batch = (int)US_MIN((size_t)batch, ds.n);
        st = us_model_prepare(m, batch * seq, &e);
    }
    size_t nlog = 0;
    if (!st && logits_out) {
        nlog = ds.n * (size_t)seq * (size_t)m->cfg.vocab;
        logits = us_malloc(nlog * 4, &e, "--logits-out: the logits of every row");
        if (!logits) st = US_ENOMEM;
    }
    double loss_sum = 0;
    long counted = 0;
    if (!st) st = us_eval_dataset(m, &ds, batch, seq, logits, &loss_sum, &counted, &e);
    if (!st && logits) {
        us_st_write_tensor t = {.name = "logits", .dtype = US_DT_F32, .ndim = 3, .data = logits,
                                .shape = {(int64_t)ds.n, seq, m->cfg.vocab}};
        const char *meta[] = {"format", "pt"};
        st = us_st_write(logits_out, &t, 1, meta, 1, &e);
    }
    if (!st) {
        double loss = counted ? loss_sum / counted : NAN;
        printf("rows %zu  tokens %ld  loss %.6f  perplexity %.4f\n", ds.n, counted, loss, exp(loss));
        if (logits_out) printf("logits [%zu, %d, %d] written to %s\n", ds.n, seq, m->cfg.vocab, logits_out);
    }
    free(logits);
    us_token_dataset_free(&ds);
    us_model_free(m);
    if (be) be->destroy(be);
    if (st) {
        fprintf(stderr, "unswag eval: error: %s\n", e.msg);
        return 1;
    }
    return 0;
}
