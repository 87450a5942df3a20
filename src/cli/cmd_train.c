/* cmd_train.c — `unswag train`: flags to us_train_opts, then the library does the work. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/common.h"
#include "io/adapter.h"
#include "model/model.h"
#include "train/trainer.h"

static const char *usage =
    "usage: unswag train --model DIR --data FILE.jsonl --out DIR [options]\n"
    "\n"
    "Fine-tunes LoRA adapters (or, with --full, every weight) of a Hugging Face Llama, Mistral or\n"
    "Qwen2 checkpoint and writes a PEFT adapter (adapter_config.json + adapter_model.safetensors).\n"
    "\n"
    "  --model DIR            Hugging Face model directory (config.json + safetensors)\n"
    "  --data FILE            .txt, or JSONL rows of {\"input_ids\", \"labels\"} | \"text\" | Alpaca\n"
    "                         (instruction, input, output) | chat \"messages\" | prompt + completion\n"
    "  --tokenizer PATH       tokenizer.json for text data (default: the model's)\n"
    "  --train-on-prompt      also train on prompt tokens (default: completions only)\n"
    "  --chat-template NAME   force llama3|chatml|qwen3|gemma|llama2|mistral\n"
    "  --refuse-long          refuse examples longer than --seq-len instead of truncating\n"
    "  --extend-context       allow --seq-len past config.json's max_position_embeddings: positions\n"
    "                         beyond the pretrained window, RoPE as configured (context extension)\n"
    "  --out DIR              where the adapter is written (atomically, at the end)\n"
    "  --adapter-init DIR     start from a PEFT adapter (its config gives r, alpha, targets)\n"
    "  --lora-r N             rank (16)            --lora-alpha X    scaling numerator (32)\n"
    "  --lora-targets LIST    q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (all)\n"
    "  --rslora               scale by alpha/sqrt(r) instead of alpha/r\n"
    "  --lr X (2e-4)  --weight-decay X (0)  --beta1 X (0.9)  --beta2 X (0.999)  --eps X (1e-8)\n"
    "  --schedule constant|linear|cosine (cosine)   --warmup N (3% of steps)\n"
    "  --grad-clip X          global-norm clipping (1.0; 0 turns it off)\n"
    "  --grad-accum N (1)  --steps N (--epochs)  --batch N (4)  --seq-len N (longest row)\n"
    "  --epochs N             passes over the data when --steps is not given (1)\n"
    "  --packing              pack examples into --seq-len rows (attention and positions restart per\n"
    "                         example; no target crosses examples) instead of one padded example per row\n"
    "  --val-split F          hold out a seeded fraction F of the examples as the eval set (like --eval-data)\n"
    "  --no-shuffle           rows in file order, wrapping around      --seed N (42)\n"
    "  --metrics FILE.jsonl   one object per optimizer step: step, loss, lr, grad_norm, tokens_per_s\n"
    "  --device cpu|cuda      --threads N      --quiet\n"
    "  --recompute up|mlp|layer  rebuild in backward instead of keeping: the up projection (half the\n"
    "                         MLP's bytes for one product), the MLP, or whole layers; up:K / mlp:K in the\n"
    "                         first K layers only (above the --offload-mlp ones)\n"
    "  --offload              keep layer inputs in pinned host memory (implies --recompute layer)\n"
    "  --offload-mlp K        keep the MLP gate and up of K layers (from the bottom) in pinned host memory,\n"
    "                         copied out and back beside the compute (pays where the host link keeps up\n"
    "                         with the layers' compute)\n"
    "  --keep-attn K          with --offload or --recompute layer: the top K layers keep their attention\n"
    "                         output and log-sum-exp on the device, so backward rebuilds them without\n"
    "                         re-running attention (--max-memory keeps as many as fit)\n"
    "  --offload-attn K       the next K layers keep the attention output in pinned host memory instead\n"
    "  --offload-embed        keep the token-embedding table in pinned host memory; the GPU reads the step's\n"
    "                         rows from there (LoRA on a model whose LM head is not tied to it)\n"
    "  --max-memory GIB       pick the fastest plan whose planned device memory fits: smaller micro-batches\n"
    "                         (the rest as --grad-accum: the same update), then the embedding, MLPs\n"
    "                         offloaded or rebuilt, layers, offload\n"
    "  --report FILE.html     a self-contained page: loss/lr/tokens-per-s curves, configuration, memory plan\n"
    "  --eval-data FILE       held-out rows scored every --eval-every N steps (10% of the run) and at the end:\n"
    "                         eval_loss and eval_perplexity in --metrics, the eval curve in --report\n"
    "  --random-init          random weights from config.json alone (benchmarks)\n"
    "  --full                 train every weight (small models); writes model.safetensors\n"
    "  --save-every N         checkpoint every N steps into --out/checkpoint-STEP (0: only on a signal)\n"
    "  --keep K               checkpoints kept (3)     --max-skips K  non-finite updates in a row that stop (5)\n"
    "  --resume               continue from the newest complete checkpoint in --out (fresh when none)\n"
    "  SIGINT/SIGTERM finish the current step, save a checkpoint and exit 0; rerun with --resume.\n"
    "\n"
    "example:\n"
    "  unswag train --model ./SmolLM2-135M --data train.jsonl --out ./adapter --steps 100 --metrics m.jsonl\n";

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

int cmd_train(int argc, char **argv) {
    us_train_opts o;
    us_train_opts_default(&o);
    us_err e = {{0}};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
#define VAL() (v = us_arg_value(argc, argv, &i))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--model")) { if (!VAL()) return 2; o.model_dir = v; }
        else if (!strcmp(a, "--data")) { if (!VAL()) return 2; o.data_path = v; }
        else if (!strcmp(a, "--out")) { if (!VAL()) return 2; o.out_dir = v; }
        else if (!strcmp(a, "--adapter-init")) { if (!VAL()) return 2; o.adapter_init = v; }
        else if (!strcmp(a, "--metrics")) { if (!VAL()) return 2; o.metrics_path = v; }
        else if (!strcmp(a, "--device")) { if (!VAL()) return 2; o.device = v; }
        else if (!strcmp(a, "--lora-r")) { if (!VAL() || !us_arg_int(a, v, 1, 4096, &o.lora_r)) return 2; }
        else if (!strcmp(a, "--lora-alpha")) { if (!VAL() || !us_arg_double(a, v, &o.lora_alpha)) return 2; }
        else if (!strcmp(a, "--lora-targets")) {
            if (!VAL()) return 2;
            if (us_targets_parse(v, &o.targets, &e)) { fprintf(stderr, "unswag: --lora-targets: %s\n", e.msg); return 2; }
        }
        else if (!strcmp(a, "--rslora")) o.rslora = true;
        else if (!strcmp(a, "--max-memory")) {
            if (!VAL() || !us_arg_double(a, v, &o.max_memory)) return 2;
            if (!(o.max_memory > 0)) { fprintf(stderr, "unswag: --max-memory %s: expected a size in GiB above 0\n", v); return 2; }
        }
        else if (!strcmp(a, "--recompute")) {
            if (!VAL()) return 2;
            char name[16];
            const char *colon = strchr(v, ':');
            snprintf(name, sizeof name, "%.*s", colon ? (int)(colon - v) : (int)strlen(v), v);
            if (!us_recompute_parse(name, &o.recompute) ||
                (colon && o.recompute != US_RECOMPUTE_MLP && o.recompute != US_RECOMPUTE_UP) ||
                (colon && !us_arg_int(a, colon + 1, 1, 1 << 20, &o.recompute_layers))) {
                fprintf(stderr, "unswag: --recompute %s: expected none, up, up:LAYERS, mlp, mlp:LAYERS or layer\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--offload")) o.offload = true;
        else if (!strcmp(a, "--offload-embed")) o.offload_embed = true;
        else if (!strcmp(a, "--offload-mlp")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 20, &o.offload_mlp)) return 2; }
        else if (!strcmp(a, "--keep-attn")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 20, &o.keep_attn)) return 2; }
        else if (!strcmp(a, "--offload-attn")) { if (!VAL() || !us_arg_int(a, v, 1, 1 << 20, &o.offload_attn)) return 2; }
        else if (!strcmp(a, "--tokenizer")) { if (!VAL()) return 2; o.tokenizer_path = v; }
        else if (!strcmp(a, "--chat-template")) { if (!VAL()) return 2; o.chat_template = v; }
        else if (!strcmp(a, "--train-on-prompt")) o.train_on_prompt = true;
        else if (!strcmp(a, "--refuse-long")) o.refuse_long = true;
        else if (!strcmp(a, "--extend-context")) o.extend_context = true;
        else if (!strcmp(a, "--packing")) o.packing = true;
        else if (!strcmp(a, "--epochs")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 20, &o.epochs)) return 2; }
        else if (!strcmp(a, "--val-split")) { if (!VAL() || !us_arg_double(a, v, &o.val_split)) return 2; }
        else if (!strcmp(a, "--lr")) { if (!VAL() || !us_arg_double(a, v, &o.lr)) return 2; }
        else if (!strcmp(a, "--weight-decay")) { if (!VAL() || !us_arg_double(a, v, &o.weight_decay)) return 2; }
        else if (!strcmp(a, "--beta1")) { if (!VAL() || !us_arg_double(a, v, &o.beta1)) return 2; }
        else if (!strcmp(a, "--beta2")) { if (!VAL() || !us_arg_double(a, v, &o.beta2)) return 2; }
        else if (!strcmp(a, "--eps")) { if (!VAL() || !us_arg_double(a, v, &o.eps)) return 2; }
        else if (!strcmp(a, "--grad-clip")) { if (!VAL() || !us_arg_double(a, v, &o.grad_clip)) return 2; }
        else if (!strcmp(a, "--schedule")) {
            if (!VAL()) return 2;
            if (!us_schedule_parse(v, &o.schedule)) { fprintf(stderr, "unswag: --schedule %s: expected constant, linear or cosine\n", v); return 2; }
        }
        else if (!strcmp(a, "--warmup")) { if (!VAL() || !us_arg_int(a, v, 0, 1L << 30, &o.warmup)) return 2; }
        else if (!strcmp(a, "--grad-accum")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 20, &o.grad_accum)) return 2; }
        else if (!strcmp(a, "--steps")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 30, &o.steps)) return 2; }
        else if (!strcmp(a, "--batch")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 20, &o.batch)) return 2; }
        else if (!strcmp(a, "--seq-len")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 24, &o.seq_len)) return 2; }
        else if (!strcmp(a, "--threads")) { if (!VAL() || !us_arg_int(a, v, 1, 4096, &o.threads)) return 2; }
        else if (!strcmp(a, "--seed")) { if (!VAL() || !us_arg_u64(a, v, &o.seed)) return 2; }
        else if (!strcmp(a, "--no-shuffle")) o.shuffle = false;
        else if (!strcmp(a, "--random-init")) o.random_init = true;
        else if (!strcmp(a, "--full")) o.full = true;
        else if (!strcmp(a, "--quiet")) o.quiet = true;
        else if (!strcmp(a, "--report")) { if (!VAL()) return 2; o.report_path = v; }
        else if (!strcmp(a, "--eval-data")) { if (!VAL()) return 2; o.eval_data_path = v; }
        else if (!strcmp(a, "--eval-every")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 30, &o.eval_every)) return 2; }
        else if (!strcmp(a, "--save-every")) { if (!VAL() || !us_arg_int(a, v, 0, 1L << 30, &o.save_every)) return 2; }
        else if (!strcmp(a, "--keep")) { if (!VAL() || !us_arg_int(a, v, 1, 1L << 20, &o.keep)) return 2; }
        else if (!strcmp(a, "--max-skips")) { if (!VAL() || !us_arg_int(a, v, 0, 1L << 30, &o.max_skips)) return 2; }
        else if (!strcmp(a, "--resume")) o.resume = true;
        else {
            fprintf(stderr, "unswag train: unknown option %s (see unswag train --help)\n", a);
            return 2;
        }
#undef VAL
    }
    bool layers = o.offload || o.recompute == US_RECOMPUTE_LAYER;
    if ((o.keep_attn || o.offload_attn) && !layers && !o.max_memory) {
        fprintf(stderr, "unswag: --%s applies to rebuilt layers: add --offload or --recompute layer\n",
                o.keep_attn ? "keep-attn" : "offload-attn");
        return 2;
    }
    if (o.keep_attn && o.max_memory) {
        fprintf(stderr, "unswag: --keep-attn with --max-memory: --max-memory keeps as many attention outputs as fit\n");
        return 2;
    }
    /* a signal asks the trainer to finish the step, save a checkpoint and return */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o.stop = &stop_requested;
    us_status st = us_train(&o, &e);
    if (st) {
        fprintf(stderr, "unswag: error: %s\n", e.msg);
        return 1;
    }
    return 0;
}
