/* unswag.h — the public C API of libunswag: memory-efficient LoRA fine-tuning of Hugging Face
 * decoder checkpoints (Llama, Mistral, Qwen2 families).
 *
 * Every function that can fail returns a us_status; on failure, us_last_error() on the handle
 * involved (or the us_err the caller passed) holds a message naming the file and the problem. */
#ifndef UNSWAG_H
#define UNSWAG_H

#ifdef __cplusplus
extern "C" {
#endif

#define UNSWAG_VERSION "0.1.0"

typedef enum us_status {
    US_OK = 0,
    US_EIO,          /* a file could not be opened, read or written */
    US_EFORMAT,      /* a file's contents are malformed or inconsistent */
    US_EUNSUPPORTED, /* well-formed, but something UnSwag does not handle (architecture, dtype) */
    US_EINVAL,       /* a bad argument or option value */
    US_ENOMEM,       /* an allocation failed */
    US_EDEVICE,      /* the compute backend failed or is not compiled in */
    US_EINTERRUPTED  /* stopped by a signal; state was saved */
} us_status;

const char *us_status_name(us_status st);
/* "0.1.0 (backends: cpu cuda)" */
const char *us_version_string(void);

#include <stddef.h>
#include <stdint.h>

/* ---- training ----------------------------------------------------------------------------
 * A us_trainer holds the options of one run. Options have the names of `unswag train`'s flags
 * without the dashes ("model", "data", "out", "lora-r", "lora-alpha", "lora-targets", "lr",
 * "steps", "batch", "seq-len", "schedule", "warmup", "grad-accum", "device", "report",
 * "eval-data", "metrics", "seed", "full", "quiet", ...); values are strings as on the command
 * line, NULL for on/off options. Defaults are what users expect: LoRA r 16, alpha 32 on all seven
 * projections, AdamW lr 2e-4, cosine schedule with 3% warmup, batch 4, clipping at 1.0.
 *
 *   us_trainer *t = us_trainer_new();
 *   us_trainer_set(t, "model", "./SmolLM2-135M");
 *   us_trainer_set(t, "data", "train.jsonl");
 *   us_trainer_set(t, "out", "./adapter");
 *   if (us_trainer_run(t) != US_OK) fprintf(stderr, "%s\n", us_trainer_error(t));
 *   us_trainer_free(t);
 */
typedef struct us_trainer us_trainer;

us_trainer *us_trainer_new(void); /* NULL when out of memory */
void us_trainer_free(us_trainer *t);
/* US_EINVAL (message in us_trainer_error) for an unknown option or a bad value. */
us_status us_trainer_set(us_trainer *t, const char *option, const char *value);
/* Runs the whole fine-tuning: validates everything, trains, writes the adapter (or, with
 * "full", the model) into "out" atomically, and the report/metrics when asked for. */
us_status us_trainer_run(us_trainer *t);
const char *us_trainer_error(const us_trainer *t);

/* ---- inference ---------------------------------------------------------------------------
 * A us_session is a model (optionally with a PEFT LoRA adapter) on a device, for evaluation and
 * generation. Errors: the message is in us_session_error (or err for us_session_open). */
typedef struct us_session us_session;

/* device: "cpu" or "cuda" (NULL: cpu). adapter_dir may be NULL. err (may be NULL) receives the
 * message of a failure, cut to err_cap bytes. */
us_status us_session_open(us_session **out, const char *model_dir, const char *adapter_dir, const char *device,
                          char *err, size_t err_cap);
void us_session_free(us_session *s);
const char *us_session_error(const us_session *s);
int us_session_vocab(const us_session *s);
/* Mean token loss over a dataset (the formats `unswag train` reads), and the tokens counted. */
us_status us_session_eval(us_session *s, const char *data_path, int batch, double *loss, long *tokens);
/* Generates up to max_new ids after the prompt into out (room for max_new), stopping after the
 * model's EOS id; temperature 0 is greedy, top_k 0 / top_p 1 switch those filters off. */
us_status us_session_generate(us_session *s, const int32_t *prompt, int n_prompt, int max_new, float temperature,
                              int top_k, float top_p, uint64_t seed, int32_t *out, int *n_out);

#ifdef __cplusplus
}
#endif
#endif
