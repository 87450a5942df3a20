/* finetune.c — fine-tuning through libunswag's public API (include/unswag.h) only.
 *
 *   cc finetune.c $(pkg-config --cflags --libs unswag) -o finetune
 *   ./finetune MODEL_DIR DATA.jsonl OUT_DIR [STEPS]
 *
 * Scores the data with the base model, trains a LoRA adapter (the library's defaults: r 16,
 * alpha 32, all linear projections, cosine schedule; a higher learning rate for a short run),
 * scores again with the adapter applied, and greedily continues the first ids of a prompt.
 * Exit status 0 when everything worked and the loss went down. */
#include <stdio.h>
#include <stdlib.h>

#include <unswag.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR DATA.jsonl OUT_DIR [STEPS]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *data = argv[2], *out = argv[3], *steps = argc > 4 ? argv[4] : "20";
    printf("libunswag %s\n", us_version_string());
    char err[1024];
    us_session *s;
    double before, after;
    long tokens;
    if (us_session_open(&s, model, NULL, "cpu", err, sizeof err) != US_OK) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    if (us_session_eval(s, data, 8, &before, &tokens) != US_OK) {
        fprintf(stderr, "eval: %s\n", us_session_error(s));
        return 1;
    }
    us_session_free(s);

    us_trainer *t = us_trainer_new();
    const char *opts[][2] = {{"model", model}, {"data", data}, {"out", out}, {"steps", steps}, {"lr", "2e-3"},
                             {"quiet", NULL}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        if (us_trainer_set(t, opts[i][0], opts[i][1]) != US_OK) {
            fprintf(stderr, "option %s: %s\n", opts[i][0], us_trainer_error(t));
            return 1;
        }
    if (us_trainer_run(t) != US_OK) {
        fprintf(stderr, "train: %s\n", us_trainer_error(t));
        return 1;
    }
    us_trainer_free(t);

    if (us_session_open(&s, model, out, "cpu", err, sizeof err) != US_OK) {
        fprintf(stderr, "open with adapter: %s\n", err);
        return 1;
    }
    if (us_session_eval(s, data, 8, &after, &tokens) != US_OK) {
        fprintf(stderr, "eval: %s\n", us_session_error(s));
        return 1;
    }
    int32_t prompt[3] = {1, 2, 3}, gen[8];
    int n = 0;
    if (us_session_generate(s, prompt, 3, 8, 0.0f, 0, 1.0f, 0, gen, &n) != US_OK) {
        fprintf(stderr, "generate: %s\n", us_session_error(s));
        return 1;
    }
    us_session_free(s);
    printf("loss over %ld tokens: %.4f before, %.4f after fine-tuning\ngreedy continuation of [1 2 3]:", tokens, before,
           after);
    for (int i = 0; i < n; i++) printf(" %d", gen[i]);
    printf("\nadapter written to %s\n", out);
    return after < before ? 0 : 1;
}
