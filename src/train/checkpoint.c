/* checkpoint.c — writing, validating, pruning and resuming checkpoints (see checkpoint.h).
 *
 * Save order, each step atomic: state.safetensors, the adapter files, the --metrics file synced,
 * manifest.json (the commit point), then OUT's top-level adapter, then pruning. Validation reads
 * the manifest and re-hashes every file it lists, so a torn or foreign file is never resumed
 * from. The run's identity (options and sizes that change the numbers) is stored as strings in
 * the manifest and compared key by key on resume, so a mismatch names the option. */
#include "train/checkpoint.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/jsonutil.h"
#include "io/safetensors.h"

#define CK_FORMAT "unswag-checkpoint"
#define CK_VERSION 1
#define CK_MANIFEST "manifest.json"
#define CK_STATE "state.safetensors"
#define CK_MAX 4096

/* ------------------------------------------------------------------ small helpers */

static void slow_save(void) {
    static long ms = -1;
    if (ms < 0) {
        const char *v = getenv("UNSWAG_TEST_SLOW_SAVE_MS");
        ms = v ? atol(v) : 0;
        if (ms < 0) ms = 0;
    }
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static uint64_t fnv1a(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static us_status hash_file(const char *path, uint64_t *size, uint64_t *hash, us_err *e) {
    char *data;
    size_t len;
    us_status st = us_read_file(path, &data, &len, e);
    if (st) return st;
    *size = len;
    *hash = fnv1a(data, len);
    free(data);
    return US_OK;
}

static us_status sync_dir(const char *dir, us_err *e) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return us_fail(e, US_EIO, "%s: cannot open directory to sync it: %s", dir, strerror(errno));
    int r = fsync(fd);
    int err = errno;
    close(fd);
    if (r != 0 && err != EINVAL) return us_fail(e, US_EIO, "%s: cannot sync directory: %s", dir, strerror(err));
    return US_OK;
}

/* "checkpoint-<digits>" -> step; -1 otherwise */
static int parse_ckpt_name(const char *name) {
    static const char pre[] = "checkpoint-";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return -1;
    const char *p = name + sizeof pre - 1;
    if (!*p) return -1;
    long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > 1L << 30) return -1;
    }
    return (int)v;
}

static int cmp_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

/* Steps of every checkpoint-N directory under out, newest first; returns the count (<= cap). */
static int list_ckpts(const char *out, int *steps, int cap) {
    DIR *d = opendir(out);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        int s = parse_ckpt_name(de->d_name);
        if (s < 0) continue;
        char p[4096];
        struct stat sb;
        if (snprintf(p, sizeof p, "%s/%s", out, de->d_name) >= (int)sizeof p) continue;
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_desc);
    return n;
}

static void ckpt_path(char *buf, size_t cap, const char *out, int step) { snprintf(buf, cap, "%s/checkpoint-%d", out, step); }

/* Removes a checkpoint directory: the manifest first (it reads as incomplete from then on). */
static void remove_ckpt(const char *dir) {
    char p[4400];
    snprintf(p, sizeof p, "%s/" CK_MANIFEST, dir);
    unlink(p);
    sync_dir(dir, NULL);
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < (int)sizeof p) unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static bool exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* ------------------------------------------------------------------ identity */

typedef struct {
    char key[32], val[64];
} kv;

/* The options and sizes a resumed run must share with the checkpoint. */
static int identity(const us_ckpt_run *r, kv *out) {
    const us_train_opts *o = r->o;
    const us_model *m = r->m;
    int n = 0;
#define PUT(k, ...) (snprintf(out[n].key, sizeof out[n].key, "%s", k), snprintf(out[n].val, sizeof out[n].val, __VA_ARGS__), n++)
    PUT("trainable_parameters", "%zu", m->n_params);
    PUT("full", "%s", m->spec.full ? "true" : "false");
    PUT("lora_r", "%d", m->spec.full ? 0 : m->spec.lora.r);
    PUT("lora_alpha", "%.17g", m->spec.full ? 0.0 : m->spec.lora.alpha);
    PUT("lora_targets", "%u", m->spec.full ? 0u : m->spec.lora.targets);
    PUT("rslora", "%s", !m->spec.full && m->spec.lora.rslora ? "true" : "false");
    PUT("examples", "%zu", r->n_examples);
    PUT("steps", "%d", r->steps);
    PUT("batch", "%d", o->batch);
    PUT("seq_len", "%d", r->seq);
    PUT("grad_accum", "%d", o->grad_accum);
    PUT("seed", "%" PRIu64, o->seed);
    PUT("shuffle", "%s", o->shuffle ? "true" : "false");
    PUT("lr", "%.17g", o->lr);
    PUT("schedule", "%d", (int)o->schedule);
    PUT("warmup", "%d", r->warmup);
    PUT("weight_decay", "%.17g", o->weight_decay);
    PUT("beta1", "%.17g", o->beta1);
    PUT("beta2", "%.17g", o->beta2);
    PUT("eps", "%.17g", o->eps);
    PUT("grad_clip", "%.17g", o->grad_clip);
#undef PUT
    return n;
}

/* ------------------------------------------------------------------ metrics */

us_status us_metrics_open(const char *path, int64_t keep_bytes, FILE **out, us_err *e) {
    *out = NULL;
    if (keep_bytes < 0) {
        *out = fopen(path, "w");
        if (!*out) return us_fail(e, US_EIO, "--metrics %s: cannot open for writing: %s", path, strerror(errno));
        return US_OK;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return us_fail(e, US_EIO, "--metrics %s: cannot open for writing: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) == 0 && sb.st_size > keep_bytes && ftruncate(fd, (off_t)keep_bytes) != 0) {
        int err = errno;
        close(fd);
        return us_fail(e, US_EIO, "--metrics %s: cannot cut back to the checkpoint's %lld bytes: %s", path,
                       (long long)keep_bytes, strerror(err));
    }
    if (lseek(fd, 0, SEEK_END) < 0 || !(*out = fdopen(fd, "a"))) {
        int err = errno;
        close(fd);
        return us_fail(e, US_EIO, "--metrics %s: cannot open for appending: %s", path, strerror(err));
    }
    return US_OK;
}

/* ------------------------------------------------------------------ save */

uint64_t us_ckpt_bytes(const us_model *m) {
    uint64_t p = (uint64_t)m->n_params * 4;
    return 3 * p + (m->spec.full ? 0 : p) + (1 << 16);
}

static us_status write_manifest(const us_ckpt_run *r, const us_ckpt_state *s, const char *dir, us_err *e) {
    static const char *const files_lora[] = {CK_STATE, "adapter_model.safetensors", "adapter_config.json"};
    size_t nfiles = r->m->spec.full ? 1 : 3;
    cJSON *root = cJSON_CreateObject();
    cJSON *run = cJSON_AddObjectToObject(root, "run");
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    bool ok = root && run && files;
    ok = ok && cJSON_AddStringToObject(root, "format", CK_FORMAT);
    ok = ok && cJSON_AddNumberToObject(root, "version", CK_VERSION);
    ok = ok && cJSON_AddNumberToObject(root, "step", s->step);
    ok = ok && cJSON_AddNumberToObject(root, "adam_t", s->step - s->skipped);
    ok = ok && cJSON_AddNumberToObject(root, "skipped", s->skipped);
    ok = ok && cJSON_AddNumberToObject(root, "consec_skipped", s->consec_skipped);
    ok = ok && cJSON_AddNumberToObject(root, "epoch", (double)s->epoch);
    ok = ok && cJSON_AddNumberToObject(root, "cursor", (double)s->cursor);
    ok = ok && cJSON_AddNumberToObject(root, "metrics_bytes", (double)s->metrics_bytes);
    kv id[32];
    int nid = identity(r, id);
    for (int i = 0; ok && i < nid; i++) ok = cJSON_AddStringToObject(run, id[i].key, id[i].val) != NULL;
    us_status st = US_OK;
    for (size_t i = 0; ok && !st && i < nfiles; i++) {
        char p[4400], hex[24];
        uint64_t size, hash;
        snprintf(p, sizeof p, "%s/%s", dir, files_lora[i]);
        st = hash_file(p, &size, &hash, e);
        if (st) break;
        snprintf(hex, sizeof hex, "%016" PRIx64, hash);
        cJSON *f = cJSON_CreateObject();
        ok = f && cJSON_AddItemToArray(files, f);
        ok = ok && cJSON_AddStringToObject(f, "name", files_lora[i]);
        ok = ok && cJSON_AddNumberToObject(f, "bytes", (double)size);
        ok = ok && cJSON_AddStringToObject(f, "fnv1a64", hex);
    }
    char *text = (!st && ok) ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (st) return st;
    if (!text) return us_fail(e, US_ENOMEM, "%s: out of memory building the manifest", dir);
    char p[4400];
    snprintf(p, sizeof p, "%s/" CK_MANIFEST, dir);
    slow_save();
    st = us_write_file_atomic(p, text, strlen(text), e);
    free(text);
    return st;
}

static us_status prune(const us_ckpt_run *r, int saved_step) {
    const char *out = r->o->out_dir;
    int steps[CK_MAX];
    int n = list_ckpts(out, steps, CK_MAX);
    int keep = r->o->keep > 0 ? r->o->keep : 1, kept = 0;
    for (int i = 0; i < n; i++) {
        char dir[4096], man[4200];
        ckpt_path(dir, sizeof dir, out, steps[i]);
        snprintf(man, sizeof man, "%s/" CK_MANIFEST, dir);
        bool complete = exists(man);
        if (steps[i] == saved_step || (complete && kept < keep)) {
            kept += complete;
            continue;
        }
        remove_ckpt(dir);
    }
    sync_dir(out, NULL);
    return US_OK;
}

us_status us_ckpt_save(const us_ckpt_run *r, const us_ckpt_state *s, char *saved, size_t cap, us_err *e) {
    const us_train_opts *o = r->o;
    us_model *m = r->m;
    us_backend *be = m->be;
    char dir[4096], p[4200];
    ckpt_path(dir, sizeof dir, o->out_dir, s->step);
    if (saved && cap) snprintf(saved, cap, "%s", dir);
    if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
        return us_fail(e, US_EIO, "%s: cannot create the output directory: %s", o->out_dir, strerror(errno));
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return us_fail(e, US_EIO, "%s: cannot create the checkpoint directory: %s", dir, strerror(errno));
    /* a directory left by an interrupted save of this step: its manifest (if any) goes first */
    snprintf(p, sizeof p, "%s/" CK_MANIFEST, dir);
    unlink(p);
    us_status st = sync_dir(o->out_dir, e);
    if (st) return st;

    size_t n = m->n_params;
    float *h = us_malloc(3 * n * sizeof(float) + 16, e, "checkpoint state");
    if (!h) return US_ENOMEM;
    be->sync(be);
    be->download(be, h, m->params, n * 4);
    be->download(be, h + n, r->adam_m, n * 4);
    be->download(be, h + 2 * n, r->adam_v, n * 4);
    us_st_write_tensor t[3] = {
        {.name = "params", .dtype = US_DT_F32, .ndim = 1, .shape = {(int64_t)n}, .data = h},
        {.name = "adam_m", .dtype = US_DT_F32, .ndim = 1, .shape = {(int64_t)n}, .data = h + n},
        {.name = "adam_v", .dtype = US_DT_F32, .ndim = 1, .shape = {(int64_t)n}, .data = h + 2 * n},
    };
    static const char *const meta[] = {"format", CK_FORMAT};
    snprintf(p, sizeof p, "%s/" CK_STATE, dir);
    slow_save();
    st = us_st_write(p, t, 3, meta, 1, e);
    free(h);
    if (st) return st;
    if (!m->spec.full) {
        slow_save();
        if ((st = us_model_save_adapter(m, dir, o->model_dir, e))) return st;
    }
    if (r->metrics) {
        if (fflush(r->metrics) != 0 || fsync(fileno(r->metrics)) != 0)
            return us_fail(e, US_EIO, "--metrics %s: cannot sync: %s", o->metrics_path, strerror(errno));
    }
    if ((st = write_manifest(r, s, dir, e))) return st;
    /* the checkpoint is complete; now OUT's own adapter */
    slow_save();
    st = m->spec.full ? us_model_save_full(m, o->out_dir, o->model_dir, e)
                      : us_model_save_adapter(m, o->out_dir, o->model_dir, e);
    if (st) return st;
    return prune(r, s->step);
}

/* ------------------------------------------------------------------ validate and resume */

/* Parses and checks dir's manifest; *root receives it on success. */
static us_status load_manifest(const char *dir, cJSON **root, us_err *e) {
    char p[4200];
    snprintf(p, sizeof p, "%s/" CK_MANIFEST, dir);
    char *text;
    size_t len;
    us_status st = us_read_file(p, &text, &len, e);
    if (st) return st;
    st = us_json_parse(text, len, p, root, e);
    free(text);
    if (st) return st;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(*root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(*root, "version");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(*root, "files");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, CK_FORMAT) != 0)
        st = us_fail(e, US_EFORMAT, "%s: not an unswag checkpoint manifest (\"format\")", p);
    else if (!us_json_int_in(ver, CK_VERSION, CK_VERSION, NULL))
        st = us_fail(e, US_EUNSUPPORTED, "%s: checkpoint version is not %d", p, CK_VERSION);
    else if (!cJSON_IsArray(files) || !files->child)
        st = us_fail(e, US_EFORMAT, "%s: \"files\" must be a non-empty list", p);
    for (const cJSON *f = files ? files->child : NULL; !st && f; f = f->next) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *by = cJSON_GetObjectItemCaseSensitive(f, "bytes");
        const cJSON *hx = cJSON_GetObjectItemCaseSensitive(f, "fnv1a64");
        int64_t want;
        if (!cJSON_IsString(nm) || strchr(nm->valuestring, '/') || !nm->valuestring[0] ||
            !us_json_int_in(by, 0, INT64_MAX, &want) || !cJSON_IsString(hx)) {
            st = us_fail(e, US_EFORMAT, "%s: malformed entry in \"files\"", p);
            break;
        }
        char fp[4400], hex[24];
        uint64_t size, hash;
        snprintf(fp, sizeof fp, "%s/%s", dir, nm->valuestring);
        if ((st = hash_file(fp, &size, &hash, e))) break;
        snprintf(hex, sizeof hex, "%016" PRIx64, hash);
        if (size != (uint64_t)want || strcmp(hex, hx->valuestring) != 0)
            st = us_fail(e, US_EFORMAT, "%s: %llu bytes with hash %s, but the manifest says %lld bytes, hash %s", fp,
                         (unsigned long long)size, hex, (long long)want, hx->valuestring);
    }
    if (st) {
        cJSON_Delete(*root);
        *root = NULL;
    }
    return st;
}

us_status us_ckpt_validate(const char *dir, int *step, us_err *e) {
    cJSON *root;
    us_status st = load_manifest(dir, &root, e);
    if (st) return st;
    int64_t s;
    if (!us_json_int_in(cJSON_GetObjectItemCaseSensitive(root, "step"), 0, INT32_MAX, &s))
        st = us_fail(e, US_EFORMAT, "%s/" CK_MANIFEST ": \"step\" must be a non-negative integer", dir);
    else if (step)
        *step = (int)s;
    cJSON_Delete(root);
    return st;
}

bool us_ckpt_newest(const char *out_dir, char *path, size_t cap, int *step) {
    int steps[CK_MAX];
    int n = list_ckpts(out_dir, steps, CK_MAX);
    for (int i = 0; i < n; i++) {
        char dir[4096];
        ckpt_path(dir, sizeof dir, out_dir, steps[i]);
        if (us_ckpt_validate(dir, step, NULL) == US_OK) {
            snprintf(path, cap, "%s", dir);
            return true;
        }
    }
    return false;
}

us_status us_ckpt_check_fresh(const char *out_dir, us_err *e) {
    int steps[4];
    int n = list_ckpts(out_dir, steps, 4);
    if (n > 0)
        return us_fail(e, US_EINVAL,
                       "--out %s already holds checkpoints (checkpoint-%d); add --resume to continue that run, or "
                       "choose another --out", out_dir, steps[0]);
    return US_OK;
}

static us_status get_i64(const cJSON *root, const char *key, int64_t lo, int64_t hi, int64_t *v, const char *dir,
                         us_err *e) {
    if (!us_json_int_in(cJSON_GetObjectItemCaseSensitive(root, key), lo, hi, v))
        return us_fail(e, US_EFORMAT, "%s/" CK_MANIFEST ": \"%s\" is missing or out of range", dir, key);
    return US_OK;
}

/* Restores dir into the run; identity mismatches are errors naming the option. */
static us_status restore(const us_ckpt_run *r, const char *dir, us_ckpt_state *s, us_err *e) {
    cJSON *root;
    us_status st = load_manifest(dir, &root, e);
    if (st) return st;
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(root, "run");
    kv id[32];
    int nid = identity(r, id);
    for (int i = 0; i < nid && !st; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(run, id[i].key);
        if (!cJSON_IsString(v) || strcmp(v->valuestring, id[i].val) != 0)
            st = us_fail(e, US_EINVAL,
                         "%s was written by a different run: %s = %s there, %s now; resume with the same options "
                         "(and data), or choose another --out", dir, id[i].key, cJSON_IsString(v) ? v->valuestring : "?",
                         id[i].val);
    }
    int64_t step = 0, skipped = 0, consec = 0, epoch = 0, cursor = 0, mb = -1, adam_t = 0;
    if (!st) st = get_i64(root, "step", 0, r->steps, &step, dir, e);
    if (!st) st = get_i64(root, "skipped", 0, step, &skipped, dir, e);
    if (!st) st = get_i64(root, "consec_skipped", 0, skipped, &consec, dir, e);
    if (!st) st = get_i64(root, "adam_t", step - skipped, step - skipped, &adam_t, dir, e);
    if (!st) st = get_i64(root, "epoch", 0, INT64_MAX / 2, &epoch, dir, e);
    if (!st) st = get_i64(root, "cursor", 0, (int64_t)r->n_examples, &cursor, dir, e);
    if (!st) st = get_i64(root, "metrics_bytes", -1, INT64_MAX / 2, &mb, dir, e);
    cJSON_Delete(root);
    if (st) return st;

    char p[4200];
    snprintf(p, sizeof p, "%s/" CK_STATE, dir);
    us_st_file *f;
    if ((st = us_st_open(p, &f, e))) return st;
    us_model *m = r->m;
    us_backend *be = m->be;
    const char *names[3] = {"params", "adam_m", "adam_v"};
    void *dst[3] = {m->params, r->adam_m, r->adam_v};
    for (int i = 0; i < 3 && !st; i++) {
        const us_st_tensor *t = us_st_find(f, names[i]);
        if (!t || t->dtype != US_DT_F32 || t->ndim != 1 || t->shape[0] != (int64_t)m->n_params)
            st = us_fail(e, US_EFORMAT, "%s: tensor %s missing or not F32 [%zu]", p, names[i], m->n_params);
        else
            be->upload(be, dst[i], t->data, m->n_params * 4); /* upload copies from host memory */
    }
    us_st_close(f);
    if (st) return st;
    if (m->spec.full) us_model_sync_weights(m);
    be->sync(be);
    *s = (us_ckpt_state){.step = (int)step, .skipped = (int)skipped, .consec_skipped = (int)consec,
                         .epoch = (uint64_t)epoch, .cursor = (uint64_t)cursor, .metrics_bytes = mb};
    return US_OK;
}

/* Temporary files of our own atomic writes into OUT that a kill left behind. */
static void remove_stray_tmp(const char *out) {
    static const char *const ours[] = {"adapter_model.safetensors.tmp.", "adapter_config.json.tmp.",
                                       "model.safetensors.tmp.", "config.json.tmp."};
    DIR *d = opendir(out);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)))
        for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
            if (strncmp(de->d_name, ours[i], strlen(ours[i])) == 0 && strlen(de->d_name) == strlen(ours[i]) + 6) {
                char p[4400];
                if (snprintf(p, sizeof p, "%s/%s", out, de->d_name) < (int)sizeof p) unlink(p);
            }
    closedir(d);
}

us_status us_ckpt_resume(const us_ckpt_run *r, us_ckpt_state *s, bool *found, char *from, size_t cap, us_err *e) {
    *found = false;
    const char *out = r->o->out_dir;
    remove_stray_tmp(out);
    int steps[CK_MAX];
    int n = list_ckpts(out, steps, CK_MAX);
    int chosen = -1;
    us_status st = US_OK;
    for (int i = 0; i < n; i++) {
        char dir[4096];
        ckpt_path(dir, sizeof dir, out, steps[i]);
        us_err why;
        cJSON *man = NULL;
        us_status bad = load_manifest(dir, &man, &why);
        cJSON_Delete(man);
        if (bad) {
            /* torn or missing manifest: a save that was interrupted; the next save redoes it */
            if (!r->o->quiet) fprintf(stderr, "unswag: skipping incomplete %s (%s)\n", dir, why.msg);
            continue;
        }
        st = restore(r, dir, s, e);
        if (st) return st;
        chosen = steps[i];
        if (from && cap) snprintf(from, cap, "%s", dir);
        break;
    }
    /* anything newer than the resume point belongs to a future this run will redo */
    for (int i = 0; i < n; i++)
        if (steps[i] > chosen) {
            char dir[4096];
            ckpt_path(dir, sizeof dir, out, steps[i]);
            remove_ckpt(dir);
        }
    *found = chosen >= 0;
    return st;
}
