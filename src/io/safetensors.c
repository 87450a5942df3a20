/* safetensors.c — mmap reader, sharded model directories, and the atomic writer.
 *
 * Reading maps the whole file read-only and validates the header before handing out a single
 * pointer: header length against the file size (and a 100 MiB cap), JSON shape, dtype names,
 * non-negative dims whose product (times the dtype size) cannot overflow, offsets inside the data
 * block, end - begin == nbytes, no duplicate names and no two tensors overlapping (checked by
 * sorting on begin). Tensors are kept sorted by name so lookups are binary searches.
 * A model directory is model.safetensors, or model.safetensors.index.json whose weight_map names
 * the shard of every tensor; each shard is opened once and every mapping is checked to really be
 * in its shard. Writing streams the header and the tensors into a mkstemp file next to the
 * target, fsyncs it, renames it over the target and fsyncs the directory; on any failure the
 * temporary file is removed and the target is left as it was. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/jsonutil.h"

#define ST_MAX_HEADER ((uint64_t)100 << 20)
#define ST_MAX_OFFSET 9007199254740992.0 /* 2^53: every larger offset is inexact in JSON doubles */

struct us_st_file {
    char *path;
    void *map;
    size_t map_len;
    us_st_tensor *t; /* sorted by name */
    size_t n;
};

/* ---------------------------------------------------------------- reading one file */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const us_st_tensor *)a)->name, ((const us_st_tensor *)b)->name);
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} st_range;

static int cmp_range(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static us_status st_check_metadata(const char *path, const cJSON *meta, us_err *e) {
    if (!cJSON_IsObject(meta))
        return us_fail(e, US_EFORMAT, "%s: __metadata__ must be an object of strings, got %s", path,
                       us_json_type_name(meta));
    for (const cJSON *m = meta->child; m; m = m->next)
        if (!cJSON_IsString(m))
            return us_fail(e, US_EFORMAT, "%s: __metadata__ key \"%s\" must map to a string, got %s", path,
                           m->string ? m->string : "", us_json_type_name(m));
    return US_OK;
}

/* Fills *t from one header entry; offsets are relative to the data block of data_len bytes. */
static us_status st_parse_entry(const char *path, const cJSON *v, uint64_t data_len, us_st_tensor *t,
                                uint64_t *begin, uint64_t *end, us_err *e) {
    const char *name = t->name;
    if (!cJSON_IsObject(v))
        return us_fail(e, US_EFORMAT, "%s: tensor %s: header entry must be an object, got %s", path, name,
                       us_json_type_name(v));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(v, "dtype");
    if (!cJSON_IsString(dt))
        return us_fail(e, US_EFORMAT, "%s: tensor %s: \"dtype\" must be a string, got %s", path, name,
                       us_json_type_name(dt));
    if (!us_dtype_from_name(dt->valuestring, &t->dtype))
        return us_fail(e, US_EUNSUPPORTED, "%s: tensor %s: unknown dtype \"%s\"", path, name, dt->valuestring);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(v, "shape");
    if (!cJSON_IsArray(sh))
        return us_fail(e, US_EFORMAT, "%s: tensor %s: \"shape\" must be an array, got %s", path, name,
                       us_json_type_name(sh));
    int nd = cJSON_GetArraySize(sh);
    if (nd > US_ST_MAX_DIMS)
        return us_fail(e, US_EUNSUPPORTED, "%s: tensor %s: %d dimensions (at most %d supported)", path, name, nd,
                       US_ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        int64_t dim;
        if (!us_json_int_in(d, 0, INT64_MAX, &dim))
            return us_fail(e, US_EFORMAT, "%s: tensor %s: shape[%d] must be a non-negative integer", path, name, i);
        t->shape[i] = dim;
        if (__builtin_mul_overflow(numel, (uint64_t)dim, &numel) || numel > (uint64_t)INT64_MAX)
            return us_fail(e, US_EFORMAT, "%s: tensor %s: shape's element count overflows", path, name);
    }
    t->numel = (int64_t)numel;
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)us_dtype_size(t->dtype), &nbytes) || nbytes > SIZE_MAX)
        return us_fail(e, US_EFORMAT, "%s: tensor %s: shape's byte size overflows", path, name);
    t->nbytes = (size_t)nbytes;

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(v, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return us_fail(e, US_EFORMAT, "%s: tensor %s: \"data_offsets\" must be an array [begin, end]", path, name);
    int64_t b, en;
    if (!us_json_int_in(off->child, 0, (int64_t)ST_MAX_OFFSET, &b) ||
        !us_json_int_in(off->child->next, 0, (int64_t)ST_MAX_OFFSET, &en))
        return us_fail(e, US_EFORMAT, "%s: tensor %s: data_offsets must be non-negative integers", path, name);
    if (en < b)
        return us_fail(e, US_EFORMAT, "%s: tensor %s: data_offsets [%lld, %lld] end before begin", path, name,
                       (long long)b, (long long)en);
    if ((uint64_t)en > data_len)
        return us_fail(e, US_EFORMAT,
                       "%s: tensor %s: data_offsets [%lld, %lld] exceed the data block of %llu bytes (truncated file?)",
                       path, name, (long long)b, (long long)en, (unsigned long long)data_len);
    if ((uint64_t)(en - b) != nbytes)
        return us_fail(e, US_EFORMAT,
                       "%s: tensor %s: data_offsets span %lld bytes but shape x dtype %s needs %llu bytes", path, name,
                       (long long)(en - b), us_dtype_name(t->dtype), (unsigned long long)nbytes);
    *begin = (uint64_t)b;
    *end = (uint64_t)en;
    return US_OK;
}

/* Validates the parsed header and builds f->t; root is the header object. */
static us_status st_load_header(us_st_file *f, const cJSON *root, const uint8_t *data, uint64_t data_len,
                                us_err *e) {
    const char *path = f->path;
    if (!cJSON_IsObject(root))
        return us_fail(e, US_EFORMAT, "%s: header must be a JSON object, got %s", path, us_json_type_name(root));
    size_t count = 0, n_meta = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (++n_meta > 1) return us_fail(e, US_EFORMAT, "%s: duplicate __metadata__ entry in header", path);
            us_status st = st_check_metadata(path, c, e);
            if (st) return st;
        } else {
            count++;
        }
    }
    f->t = us_calloc(count, sizeof *f->t, e, "safetensors tensor table");
    st_range *rng = us_calloc(count, sizeof *rng, e, "safetensors range table");
    if (!f->t || !rng) {
        free(rng);
        return US_ENOMEM;
    }
    us_status st = US_OK;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) continue;
        us_st_tensor *t = &f->t[f->n];
        if (!c->string[0]) {
            st = us_fail(e, US_EFORMAT, "%s: header has a tensor with an empty name", path);
            goto done;
        }
        char *nm = strdup(c->string);
        if (!nm) {
            st = us_fail(e, US_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        t->name = nm;
        f->n++;
        uint64_t b = 0, en = 0;
        st = st_parse_entry(path, c, data_len, t, &b, &en, e);
        if (st) goto done;
        t->data = data + b;
        rng[f->n - 1] = (st_range){b, en, t->name};
    }
    qsort(rng, f->n, sizeof *rng, cmp_range);
    const st_range *prev = NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (rng[i].end == rng[i].begin) continue; /* empty tensors occupy nothing */
        if (prev && rng[i].begin < prev->end) {
            st = us_fail(e, US_EFORMAT, "%s: tensors %s [%llu, %llu] and %s [%llu, %llu] overlap", path, prev->name,
                         (unsigned long long)prev->begin, (unsigned long long)prev->end, rng[i].name,
                         (unsigned long long)rng[i].begin, (unsigned long long)rng[i].end);
            goto done;
        }
        prev = &rng[i];
    }
    qsort(f->t, f->n, sizeof *f->t, cmp_tensor_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->t[i - 1].name, f->t[i].name) == 0) {
            st = us_fail(e, US_EFORMAT, "%s: duplicate tensor name %s in header", path, f->t[i].name);
            goto done;
        }
done:
    free(rng);
    return st;
}

us_status us_st_open(const char *path, us_st_file **out, us_err *e) {
    *out = NULL;
    us_st_file *f = us_calloc(1, sizeof *f, e, "safetensors file");
    if (!f) return US_ENOMEM;
    f->path = strdup(path);
    if (!f->path) {
        free(f);
        return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    }
    us_status st = US_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block us */
    if (fd < 0) {
        st = us_fail(e, US_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = us_fail(e, US_EIO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = us_fail(e, US_EIO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        st = us_fail(e, US_EFORMAT, "%s: file is %llu bytes, too short for the 8-byte header length", path,
                     (unsigned long long)size);
        close(fd);
        goto fail;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        st = us_fail(e, US_EIO, "%s: cannot mmap %llu bytes: %s", path, (unsigned long long)size, strerror(errno));
        goto fail;
    }
    f->map = map;
    f->map_len = (size_t)size;
    const uint8_t *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > size - 8) {
        st = us_fail(e, US_EFORMAT, "%s: header length %llu exceeds the %llu bytes after it (truncated or not safetensors)",
                     path, (unsigned long long)hlen, (unsigned long long)(size - 8));
        goto fail;
    }
    if (hlen > ST_MAX_HEADER) {
        st = us_fail(e, US_EFORMAT, "%s: header length %llu exceeds the 100 MiB limit", path,
                     (unsigned long long)hlen);
        goto fail;
    }
    if (hlen < 2) {
        st = us_fail(e, US_EFORMAT, "%s: header length %llu is too short for a JSON object", path,
                     (unsigned long long)hlen);
        goto fail;
    }
    char where[1100];
    snprintf(where, sizeof where, "%s: header", path);
    cJSON *root;
    st = us_json_parse((const char *)p + 8, (size_t)hlen, where, &root, e);
    if (st) goto fail;
    st = st_load_header(f, root, p + 8 + hlen, size - 8 - hlen, e);
    cJSON_Delete(root);
    if (st) goto fail;
    *out = f;
    return US_OK;
fail:
    us_st_close(f);
    return st;
}

void us_st_close(us_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free((char *)f->t[i].name);
    free(f->t);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

const char *us_st_path(const us_st_file *f) { return f->path; }
size_t us_st_count(const us_st_file *f) { return f->n; }
const us_st_tensor *us_st_at(const us_st_file *f, size_t i) { return i < f->n ? &f->t[i] : NULL; }

const us_st_tensor *us_st_find(const us_st_file *f, const char *name) {
    us_st_tensor key = {.name = name};
    return bsearch(&key, f->t, f->n, sizeof *f->t, cmp_tensor_name);
}

/* ---------------------------------------------------------------- model directories */

typedef struct {
    const char *name; /* owned by the shard's tensor table */
    size_t file;
    const us_st_tensor *t;
} st_entry;

struct us_st_model {
    char *where; /* model.safetensors path or the index path, for messages */
    us_st_file **files;
    size_t nfiles;
    st_entry *map; /* sorted by name */
    size_t nmap;
};

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

static us_status model_single(us_st_model *m, const char *path, us_err *e) {
    m->where = strdup(path);
    m->files = us_calloc(1, sizeof *m->files, e, "model file table");
    if (!m->where || !m->files) return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    us_status st = us_st_open(path, &m->files[0], e);
    if (st) return st;
    m->nfiles = 1;
    size_t n = us_st_count(m->files[0]);
    m->map = us_calloc(n, sizeof *m->map, e, "model tensor map");
    if (!m->map) return US_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const us_st_tensor *t = us_st_at(m->files[0], i);
        m->map[i] = (st_entry){t->name, 0, t};
    }
    m->nmap = n; /* already sorted by name */
    return US_OK;
}

static bool plain_file_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static us_status model_sharded(us_st_model *m, const char *dir, const char *index, us_err *e) {
    m->where = strdup(index);
    if (!m->where) return us_fail(e, US_ENOMEM, "%s: out of memory", index);
    char *text;
    size_t len;
    us_status st = us_read_file(index, &text, &len, e);
    if (st) return st;
    cJSON *root;
    st = us_json_parse(text, len, index, &root, e);
    free(text);
    if (st) return st;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const char **shard_of = NULL;
    if (!cJSON_IsObject(root)) {
        st = us_fail(e, US_EFORMAT, "%s: must be a JSON object, got %s", index, us_json_type_name(root));
        goto done;
    }
    if (!cJSON_IsObject(wm)) {
        st = us_fail(e, US_EFORMAT, "%s: \"weight_map\" must be an object, got %s", index, us_json_type_name(wm));
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(wm);
    if (n == 0) {
        st = us_fail(e, US_EFORMAT, "%s: \"weight_map\" is empty", index);
        goto done;
    }
    m->files = us_calloc(n, sizeof *m->files, e, "model shard table");
    m->map = us_calloc(n, sizeof *m->map, e, "model tensor map");
    shard_of = us_calloc(n, sizeof *shard_of, e, "model shard names");
    if (!m->files || !m->map || !shard_of) {
        st = US_ENOMEM;
        goto done;
    }
    for (const cJSON *c = wm->child; c; c = c->next) {
        if (!cJSON_IsString(c)) {
            st = us_fail(e, US_EFORMAT, "%s: weight_map[\"%s\"] must be a shard file name, got %s", index, c->string,
                         us_json_type_name(c));
            goto done;
        }
        const char *shard = c->valuestring;
        if (!plain_file_name(shard)) {
            st = us_fail(e, US_EFORMAT, "%s: weight_map[\"%s\"] = \"%s\" is not a plain file name in the directory",
                         index, c->string, shard);
            goto done;
        }
        size_t k = 0;
        while (k < m->nfiles && strcmp(shard_of[k], shard) != 0) k++;
        if (k == m->nfiles) {
            char path[4096];
            if (!us_path_join(path, sizeof path, dir, shard)) {
                st = us_fail(e, US_EINVAL, "%s: shard path too long", index);
                goto done;
            }
            us_err inner;
            st = us_st_open(path, &m->files[k], &inner);
            if (st) {
                us_fail(e, st, "%s: shard %s (holding %s): %s", index, shard, c->string, inner.msg);
                goto done;
            }
            shard_of[k] = shard;
            m->nfiles++;
        }
        const us_st_tensor *t = us_st_find(m->files[k], c->string);
        if (!t) {
            st = us_fail(e, US_EFORMAT, "%s: weight_map puts tensor %s in %s, but that shard has no such tensor", index,
                         c->string, shard);
            goto done;
        }
        m->map[m->nmap++] = (st_entry){t->name, k, t};
    }
    qsort(m->map, m->nmap, sizeof *m->map, cmp_entry);
    for (size_t i = 1; i < m->nmap; i++)
        if (strcmp(m->map[i - 1].name, m->map[i].name) == 0) {
            st = us_fail(e, US_EFORMAT, "%s: tensor %s appears twice in weight_map", index, m->map[i].name);
            goto done;
        }
done:
    free(shard_of);
    cJSON_Delete(root);
    return st;
}

us_status us_st_model_open(const char *dir, us_st_model **out, us_err *e) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) return us_fail(e, US_EIO, "%s: cannot open model: %s", dir, strerror(errno));
    us_st_model *m = us_calloc(1, sizeof *m, e, "model");
    if (!m) return US_ENOMEM;
    us_status st;
    if (S_ISREG(sb.st_mode)) {
        st = model_single(m, dir, e);
    } else {
        char single[4096], index[4096];
        if (!us_path_join(single, sizeof single, dir, "model.safetensors") ||
            !us_path_join(index, sizeof index, dir, "model.safetensors.index.json")) {
            us_st_model_close(m);
            return us_fail(e, US_EINVAL, "%s: path too long", dir);
        }
        if (access(single, F_OK) == 0)
            st = model_single(m, single, e);
        else if (access(index, F_OK) == 0)
            st = model_sharded(m, dir, index, e);
        else
            st = us_fail(e, US_EIO, "%s: no model.safetensors or model.safetensors.index.json in the directory", dir);
    }
    if (st) {
        us_st_model_close(m);
        return st;
    }
    *out = m;
    return US_OK;
}

void us_st_model_close(us_st_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->nfiles; i++) us_st_close(m->files[i]);
    free(m->files);
    free(m->map);
    free(m->where);
    free(m);
}

const us_st_tensor *us_st_model_find(const us_st_model *m, const char *name, const char **file) {
    st_entry key = {.name = name};
    const st_entry *en = bsearch(&key, m->map, m->nmap, sizeof *m->map, cmp_entry);
    if (!en) return NULL;
    if (file) *file = us_st_path(m->files[en->file]);
    return en->t;
}

static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

us_status us_st_model_get(const us_st_model *m, const char *name, int ndim, const int64_t *shape,
                          const us_st_tensor **out, us_err *e) {
    *out = NULL;
    const char *file;
    const us_st_tensor *t = us_st_model_find(m, name, &file);
    if (!t) return us_fail(e, US_EFORMAT, "%s: tensor %s not found", m->where, name);
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[200], want[200];
        fmt_shape(got, sizeof got, t->ndim, t->shape);
        fmt_shape(want, sizeof want, ndim, shape);
        return us_fail(e, US_EFORMAT, "%s: tensor %s has shape %s, expected %s", file, name, got, want);
    }
    *out = t;
    return US_OK;
}

us_status us_st_model_read_f32(const us_st_model *m, const char *name, int ndim, const int64_t *shape, float *dst,
                               us_err *e) {
    const us_st_tensor *t;
    us_status st = us_st_model_get(m, name, ndim, shape, &t, e);
    if (st) return st;
    if (!us_convert_to_f32(dst, t->data, t->dtype, (size_t)t->numel)) {
        const char *file;
        us_st_model_find(m, name, &file);
        return us_fail(e, US_EUNSUPPORTED, "%s: tensor %s has dtype %s, which cannot be read as floating point", file,
                       name, us_dtype_name(t->dtype));
    }
    return US_OK;
}

/* ---------------------------------------------------------------- atomic writing */

typedef struct {
    const void *data;
    size_t len;
} st_chunk;

static bool write_all(int fd, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len) {
        ssize_t w = write(fd, p, len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        len -= (size_t)w;
    }
    return true;
}

static us_status write_chunks_atomic(const char *path, const st_chunk *c, size_t n, us_err *e) {
    size_t pl = strlen(path);
    if (pl == 0) return us_fail(e, US_EINVAL, "cannot write a file with an empty path");
    char *tmp = us_malloc(pl + 16, e, "temporary path");
    char *dir = us_malloc(pl + 2, e, "directory path");
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return US_ENOMEM;
    }
    snprintf(tmp, pl + 16, "%s.tmp.XXXXXX", path);
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = 0;
    }
    us_status st = US_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = us_fail(e, US_EIO, "%s: cannot create a temporary file in %s: %s", path, dir, strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0644) != 0) {
        st = us_fail(e, US_EIO, "%s: cannot set permissions on %s: %s", path, tmp, strerror(errno));
        goto fail_fd;
    }
    for (size_t i = 0; i < n; i++)
        if (c[i].len && !write_all(fd, c[i].data, c[i].len)) {
            st = us_fail(e, US_EIO, "%s: write failed: %s", path, strerror(errno));
            goto fail_fd;
        }
    if (fsync(fd) != 0) {
        st = us_fail(e, US_EIO, "%s: fsync failed: %s", path, strerror(errno));
        goto fail_fd;
    }
    if (close(fd) != 0) {
        fd = -1;
        st = us_fail(e, US_EIO, "%s: close failed: %s", path, strerror(errno));
        goto fail_tmp;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        st = us_fail(e, US_EIO, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
        goto fail_tmp;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        st = us_fail(e, US_EIO, "%s: written, but cannot open directory %s to sync it: %s", path, dir, strerror(errno));
        goto out;
    }
    if (fsync(dfd) != 0 && errno != EINVAL)
        st = us_fail(e, US_EIO, "%s: written, but syncing directory %s failed: %s", path, dir, strerror(errno));
    close(dfd);
    goto out;
fail_fd:
    close(fd);
fail_tmp:
    unlink(tmp);
out:
    free(tmp);
    free(dir);
    return st;
}

us_status us_write_file_atomic(const char *path, const void *data, size_t len, us_err *e) {
    if (!path) return us_fail(e, US_EINVAL, "cannot write a file: no path given");
    if (!data && len) return us_fail(e, US_EINVAL, "%s: no data to write", path);
    st_chunk c = {data, len};
    return write_chunks_atomic(path, &c, 1, e);
}

static int cmp_write_ptr(const void *a, const void *b) {
    return strcmp((*(const us_st_write_tensor *const *)a)->name, (*(const us_st_write_tensor *const *)b)->name);
}

us_status us_st_write(const char *path, const us_st_write_tensor *t, size_t n, const char *const *meta_kv,
                      size_t n_meta, us_err *e) {
    if (!path) return us_fail(e, US_EINVAL, "cannot write safetensors: no path given");
    if (n && !t) return us_fail(e, US_EINVAL, "%s: no tensors given", path);
    if (n_meta && !meta_kv) return us_fail(e, US_EINVAL, "%s: no metadata given", path);
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name || !t[i].name[0]) return us_fail(e, US_EINVAL, "%s: tensor #%zu has no name", path, i);
        if (strcmp(t[i].name, "__metadata__") == 0)
            return us_fail(e, US_EINVAL, "%s: a tensor cannot be named __metadata__", path);
        if ((unsigned)t[i].dtype >= US_DT_COUNT)
            return us_fail(e, US_EINVAL, "%s: tensor %s: invalid dtype %d", path, t[i].name, (int)t[i].dtype);
        if (t[i].ndim < 0 || t[i].ndim > US_ST_MAX_DIMS)
            return us_fail(e, US_EINVAL, "%s: tensor %s: invalid ndim %d", path, t[i].name, t[i].ndim);
    }
    for (size_t i = 0; i < n_meta; i++)
        if (!meta_kv[2 * i] || !meta_kv[2 * i + 1])
            return us_fail(e, US_EINVAL, "%s: metadata pair #%zu has a NULL key or value", path, i);

    const us_st_write_tensor **order = us_calloc(n, sizeof *order, e, "safetensors write order");
    st_chunk *chunks = us_calloc(n + 1, sizeof *chunks, e, "safetensors write chunks");
    cJSON *root = cJSON_CreateObject();
    char *hdr = NULL;
    us_status st = US_OK;
    if (!order || !chunks || !root) {
        st = order && chunks ? us_fail(e, US_ENOMEM, "%s: out of memory", path) : US_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < n; i++) order[i] = &t[i];
    qsort(order, n, sizeof *order, cmp_write_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            st = us_fail(e, US_EINVAL, "%s: duplicate tensor name %s", path, order[i]->name);
            goto done;
        }
    if (n_meta) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        if (!meta) goto nomem;
        for (size_t i = 0; i < n_meta; i++) {
            if (cJSON_GetObjectItemCaseSensitive(meta, meta_kv[2 * i])) {
                st = us_fail(e, US_EINVAL, "%s: duplicate metadata key %s", path, meta_kv[2 * i]);
                goto done;
            }
            if (!cJSON_AddStringToObject(meta, meta_kv[2 * i], meta_kv[2 * i + 1])) goto nomem;
        }
    }
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const us_st_write_tensor *w = order[k];
        uint64_t numel = 1, nbytes;
        for (int d = 0; d < w->ndim; d++) {
            if (w->shape[d] < 0) {
                st = us_fail(e, US_EINVAL, "%s: tensor %s: negative dimension %lld", path, w->name,
                             (long long)w->shape[d]);
                goto done;
            }
            if (__builtin_mul_overflow(numel, (uint64_t)w->shape[d], &numel)) goto overflow;
        }
        if (__builtin_mul_overflow(numel, (uint64_t)us_dtype_size(w->dtype), &nbytes) || nbytes > SIZE_MAX ||
            off + nbytes < off || off + nbytes > (uint64_t)ST_MAX_OFFSET)
            goto overflow;
        if (nbytes && !w->data) {
            st = us_fail(e, US_EINVAL, "%s: tensor %s has no data", path, w->name);
            goto done;
        }
        cJSON *o = cJSON_AddObjectToObject(root, w->name);
        cJSON *shape = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
        cJSON *offs = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
        if (!o || !cJSON_AddStringToObject(o, "dtype", us_dtype_name(w->dtype)) || !shape || !offs) goto nomem;
        for (int d = 0; d < w->ndim; d++) {
            cJSON *num = cJSON_CreateNumber((double)w->shape[d]);
            if (!num || !cJSON_AddItemToArray(shape, num)) goto nomem;
        }
        cJSON *b = cJSON_CreateNumber((double)off), *en = cJSON_CreateNumber((double)(off + nbytes));
        if (!b || !en) {
            cJSON_Delete(b);
            cJSON_Delete(en);
            goto nomem;
        }
        cJSON_AddItemToArray(offs, b);
        cJSON_AddItemToArray(offs, en);
        chunks[k + 1] = (st_chunk){w->data, (size_t)nbytes};
        off += nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    if (!json) goto nomem;
    size_t jl = strlen(json), hl = (jl + 8 + 7) / 8 * 8 - 8; /* 8 + hl is a multiple of 8 */
    hdr = malloc(8 + hl);
    if (!hdr) {
        free(json);
        goto nomem;
    }
    for (int i = 0; i < 8; i++) hdr[i] = (char)(((uint64_t)hl >> (8 * i)) & 0xff);
    memcpy(hdr + 8, json, jl);
    memset(hdr + 8 + jl, ' ', hl - jl);
    free(json);
    chunks[0] = (st_chunk){hdr, 8 + hl};
    st = write_chunks_atomic(path, chunks, n + 1, e);
    goto done;
overflow:
    st = us_fail(e, US_EINVAL, "%s: tensor sizes overflow", path);
    goto done;
nomem:
    st = us_fail(e, US_ENOMEM, "%s: out of memory building the header", path);
done:
    cJSON_Delete(root);
    free(hdr);
    free((void *)order);
    free(chunks);
    return st;
}

us_status us_copy_file_atomic(const char *src, const char *dst, us_err *e) {
    char *data;
    size_t len;
    us_status st = us_read_file(src, &data, &len, e);
    if (st) return st;
    st = us_write_file_atomic(dst, data, len, e);
    free(data);
    return st;
}
