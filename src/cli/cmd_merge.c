/* cmd_merge.c — `unswag merge`: a LoRA adapter folded into its base model (model/merge.h). */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "model/merge.h"

static const char *usage =
    "usage: unswag merge --model DIR --adapter DIR --out DIR\n"
    "\n"
    "Writes a plain Hugging Face checkpoint whose projections are W + s*B*A (s = alpha/r, or\n"
    "alpha/sqrt(r) with rsLoRA): the base's dtype (F32/BF16/F16) and shard layout (same shard files,\n"
    "index.json), config.json, generation_config.json and tokenizer files copied. transformers loads\n"
    "it without PEFT. --out must not exist or be empty; it is filled only when everything succeeded.\n"
    "\n"
    "  --model DIR     the base model the adapter was trained on\n"
    "  --adapter DIR   a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n"
    "  --out DIR       the merged model\n"
    "\n"
    "example:\n"
    "  unswag merge --model ./SmolLM2-135M --adapter ./adapter --out ./SmolLM2-135M-merged\n";

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--model")) { if (!(v = us_arg_value(argc, argv, &i))) return 2; model = v; }
        else if (!strcmp(a, "--adapter")) { if (!(v = us_arg_value(argc, argv, &i))) return 2; adapter = v; }
        else if (!strcmp(a, "--out")) { if (!(v = us_arg_value(argc, argv, &i))) return 2; out = v; }
        else {
            fprintf(stderr, "unswag merge: unknown option %s (see unswag merge --help)\n", a);
            return 2;
        }
    }
    if (!model || !adapter || !out) {
        fprintf(stderr, "unswag merge: --model, --adapter and --out are required (see unswag merge --help)\n");
        return 2;
    }
    us_err e = {{0}};
    if (us_merge_adapter(model, adapter, out, &e)) {
        fprintf(stderr, "unswag merge: error: %s\n", e.msg);
        return 1;
    }
    printf("merged %s + %s into %s\n", model, adapter, out);
    return 0;
}
