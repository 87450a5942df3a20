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

#ifdef __cplusplus
}
#endif
#endif
