/* common.h — what every UnSwag source file shares: status codes, the error value, dtypes.
 *
 * Errors are values (docs/ARCHITECTURE.md, property 6): a library function that can fail returns
 * a us_status and, through us_fail(), writes a message into the caller's us_err that names the
 * file, field or position at fault. Only the CLI decides to print and exit. Nothing a user can
 * feed in reaches an assert(). */
#ifndef US_COMMON_H
#define US_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "unswag.h"

typedef struct us_err {
    char msg[1024];
} us_err;

/* Formats the message into e (when e is not NULL) and returns st, so a caller can write
 * `return us_fail(e, US_EFORMAT, "%s: tensor %s: ...", path, name);`. */
us_status us_fail(us_err *e, us_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Element types of tensors in files and in memory. Values are ours, not the file format's. */
typedef enum us_dtype {
    US_DT_F32 = 0,
    US_DT_BF16,
    US_DT_F16,
    US_DT_F64,
    US_DT_I64,
    US_DT_I32,
    US_DT_I16,
    US_DT_I8,
    US_DT_U8,
    US_DT_BOOL,
    US_DT_COUNT
} us_dtype;

size_t us_dtype_size(us_dtype dt);
const char *us_dtype_name(us_dtype dt);                     /* "F32", "BF16", ... (safetensors spelling) */
bool us_dtype_from_name(const char *name, us_dtype *out);   /* false when unknown */

/* Scalar conversions. f32 -> bf16/f16 round to nearest even; NaN stays NaN. */
float us_bf16_to_f32(uint16_t h);
uint16_t us_f32_to_bf16(float f);
float us_f16_to_f32(uint16_t h);
uint16_t us_f32_to_f16(float f);
/* n elements of a floating dtype (F32, BF16, F16, F64) to f32; false for other dtypes. */
bool us_convert_to_f32(float *dst, const void *src, us_dtype dt, size_t n);

/* Allocation that reports failure as a status (sizes can come from files). */
void *us_malloc(size_t bytes, us_err *e, const char *what);
void *us_calloc(size_t n, size_t size, us_err *e, const char *what);
/* 64-byte aligned, zeroed; free with free(). */
void *us_aligned_alloc(size_t bytes, us_err *e, const char *what);

/* Reads a whole file; *len excludes the NUL terminator that is always added. */
us_status us_read_file(const char *path, char **data, size_t *len, us_err *e);
/* Joins dir and name into out (size cap); false if it does not fit. */
bool us_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Counter-based random numbers: the same (seed, stream, index) gives the same value on every
 * backend and thread, so a random-init model is identical on CPU and GPU. */
uint64_t us_hash64(uint64_t x);
float us_rand_uniform(uint64_t seed, uint64_t stream, uint64_t i);  /* [0, 1) */
float us_rand_normal(uint64_t seed, uint64_t stream, uint64_t i);   /* N(0, 1), Box-Muller */

#define US_MIN(a, b) ((a) < (b) ? (a) : (b))
#define US_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
