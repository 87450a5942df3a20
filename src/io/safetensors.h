/* safetensors.h — the safetensors format, read through mmap and written atomically.
 *
 * A file is: 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
 * {dtype, shape, data_offsets:[begin,end]} (plus an optional "__metadata__" string map), then the
 * data block. The reader trusts nothing: the header length against the file size, the JSON's
 * shape, dtypes, offsets inside the data block, sizes equal to prod(shape)*dtype size, no two
 * tensors overlapping, no duplicate names. A model directory holds either model.safetensors or
 * model.safetensors.index.json naming shards; us_st_model hides which.
 * Writing goes to a temporary file in the same directory, is fsync'ed, then renamed over the
 * target, so a reader never sees a partial file and a good file is never replaced by one. */
#ifndef US_SAFETENSORS_H
#define US_SAFETENSORS_H

#include "core/common.h"

#define US_ST_MAX_DIMS 8

typedef struct us_st_tensor {
    const char *name;
    us_dtype dtype;
    int ndim;
    int64_t shape[US_ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* points into the mapping; valid until the file is closed */
    size_t nbytes;
} us_st_tensor;

typedef struct us_st_file us_st_file;

us_status us_st_open(const char *path, us_st_file **out, us_err *e);
void us_st_close(us_st_file *f);
const char *us_st_path(const us_st_file *f);
size_t us_st_count(const us_st_file *f);
const us_st_tensor *us_st_at(const us_st_file *f, size_t i);
const us_st_tensor *us_st_find(const us_st_file *f, const char *name); /* NULL when absent */

/* A model directory: model.safetensors, or model.safetensors.index.json + shards. */
typedef struct us_st_model us_st_model;

us_status us_st_model_open(const char *dir, us_st_model **out, us_err *e);
void us_st_model_close(us_st_model *m);
/* NULL when absent; *file (optional) receives the path of the file holding it. */
const us_st_tensor *us_st_model_find(const us_st_model *m, const char *name, const char **file);

/* Fetches tensor `name` as f32 into dst, checking that its shape is exactly shape[0..ndim).
 * Errors name the file and tensor: missing, wrong shape, unsupported dtype. */
us_status us_st_model_read_f32(const us_st_model *m, const char *name, int ndim, const int64_t *shape,
                               float *dst, us_err *e);
/* Same check, but returns the tensor itself (zero-copy) for callers that convert it themselves. */
us_status us_st_model_get(const us_st_model *m, const char *name, int ndim, const int64_t *shape,
                          const us_st_tensor **out, us_err *e);

typedef struct us_st_write_tensor {
    const char *name;
    us_dtype dtype;
    int ndim;
    int64_t shape[US_ST_MAX_DIMS];
    const void *data; /* prod(shape) * us_dtype_size(dtype) bytes */
} us_st_write_tensor;

/* Writes tensors (sorted by name, 8-byte aligned data) with optional string metadata pairs
 * (meta_kv = {"k1","v1","k2","v2",...}, n_meta pairs). Atomic: tmp + fsync + rename + dir fsync. */
us_status us_st_write(const char *path, const us_st_write_tensor *t, size_t n, const char *const *meta_kv,
                      size_t n_meta, us_err *e);

/* Copies file src to dst atomically (read whole, then us_write_file_atomic). */
us_status us_copy_file_atomic(const char *src, const char *dst, us_err *e);

/* Writes `len` bytes to `path` atomically (tmp in the same dir, fsync, rename, fsync dir). */
us_status us_write_file_atomic(const char *path, const void *data, size_t len, us_err *e);

#endif
