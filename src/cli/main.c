/* main.c — the `unswag` command: dispatches to a subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/config_file.h"
#include "unswag.h"

static const struct {
    const char *name, *what;
    int (*fn)(int, char **);
} commands[] = {
    {"demo", "pretrain a tiny model, then LoRA-fine-tune it on a new task (nothing downloaded)", cmd_demo},
    {"train", "fine-tune LoRA adapters (or all weights) of a Hugging Face checkpoint", cmd_train},
    {"eval", "loss and perplexity of a model (+ adapter) over a dataset", cmd_eval},
    {"generate", "generate text from a model (+ adapter) with a KV cache", cmd_generate},
    {"merge", "merge a LoRA adapter into the base weights (a Hugging Face checkpoint)", cmd_merge},
    {"tokenize", "text (JSON strings, one per line) to token ids", cmd_tokenize},
    {"detokenize", "token ids (JSON arrays, one per line) to text", cmd_detokenize},
};

static void usage(FILE *f) {
    fprintf(f, "unswag %s — memory-efficient LoRA fine-tuning\n\nusage: unswag COMMAND [options]   (unswag COMMAND --help)\n\n",
            us_version_string());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\n  --version    print the version and the compiled backends\n"
               "  --config FILE.yaml   (any command) options from a YAML file, e.g. \"lora-r: 16\"; flags on\n"
               "               the command line override it\n"
               "\nexamples:\n"
               "  unswag demo                                   # the whole tour, nothing downloaded\n"
               "  unswag train --model ./SmolLM2-135M --data train.jsonl --out ./adapter --report run.html\n"
               "  unswag train --config run.yaml --lr 1e-4      # run.yaml holds the rest\n"
               "  unswag eval --model ./SmolLM2-135M --adapter ./adapter --data val.jsonl\n"
               "  unswag generate --model ./SmolLM2-135M --adapter ./adapter --prompt \"Hello\"\n"
               "  unswag merge --model ./SmolLM2-135M --adapter ./adapter --out ./merged\n"
               "  echo '\"hello world\"' | unswag tokenize --tokenizer ./SmolLM2-135M\n");
}

/* OpenMP threads that spin while OpenBLAS or the main thread work steal a core from them on small
 * machines (2 cores: 2-4x slower). libgomp reads OMP_WAIT_POLICY when it loads, before main, so
 * when the user has not chosen, set "passive" and re-execute once. */
static void prefer_passive_wait(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv); /* on failure, carry on with the default policy */
}

int main(int argc, char **argv) {
    prefer_passive_wait(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("unswag %s\n", us_version_string());
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name) && commands[i].fn) {
            bool has_config = false;
            for (int a = 2; a < argc; a++) has_config = has_config || !strcmp(argv[a], "--config");
            if (!has_config) return commands[i].fn(argc - 2, argv + 2);
            int n;
            char **v;
            us_err e = {{0}};
            if (us_config_expand(argc - 2, argv + 2, &n, &v, &e)) {
                fprintf(stderr, "unswag %s: %s\n", argv[1], e.msg);
                return 2;
            }
            int rc = commands[i].fn(n, v);
            us_config_argv_free(n, v);
            return rc;
        }
    fprintf(stderr, "unswag: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
