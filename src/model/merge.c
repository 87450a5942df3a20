/* merge.c — LoRA merge into a Hugging Face checkpoint (see merge.h).
 *
 * The base is walked shard by shard (the index's weight_map names them; an unsharded model is
 * its one model.safetensors). Within a shard, untouched tensors are handed to the writer straight
 * from the memory-mapped source; adapted projections are converted to f32, B A is added with one
 * sgemm (beta = 1 into W), and the result rounded to the source dtype in a buffer that lives until
 * the shard is written. Peak extra memory is therefore the adapted tensors of one shard. Tensor
 * names map to (layer, target) by parsing "model.layers.L.{self_attn,mlp}.X_proj.weight". */
#include "model/merge.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/adapter.h"
#include "io/jsonutil.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"

/* (layer, target) of a projection weight name, or false */
static bool parse_proj(const char *name, int *layer, int *target) {
    int l, n = 0;
    char mod[16], proj[32];
    if (sscanf(name, "model.layers.%d.%15[a-z_].%31[a-z_].weight%n", &l, mod, proj, &n) != 3 || name[n]) return false;
    for (int t = 0; t < US_T_COUNT; t++)
        if (!strcmp(proj, us_target_name(t)) && !strcmp(mod, t <= US_T_O ? "self_attn" : "mlp")) {
            *layer = l;
            *target = t;
            return true;
        }
    return false;
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[4200];
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < (int)sizeof p) unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

/* shard file names of the base, in order */
static us_status list_shards(const char *dir, char ***names, int *n, bool *sharded, us_err *e) {
    char idx[4096];
    struct stat sb;
    *n = 0;
    *names = NULL;
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    *sharded = stat(idx, &sb) == 0;
    if (!*sharded) {
        *names = calloc(1, sizeof **names);
        if (!*names || !((*names)[0] = strdup("model.safetensors"))) return us_fail(e, US_ENOMEM, "out of memory");
        *n = 1;
        return US_OK;
    }
    char *text;
    size_t len;
    us_status st = us_read_file(idx, &text, &len, e);
    if (st) return st;
    cJSON *root;
    st = us_json_parse(text, len, idx, &root, e);
    free(text);
    if (st) return st;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *it;
    int cap = cJSON_GetArraySize(wm);
    *names = calloc((size_t)(cap ? cap : 1), sizeof **names);
    if (!*names) st = us_fail(e, US_ENOMEM, "out of memory");
    cJSON_ArrayForEach(it, wm) {
        if (st || !cJSON_IsString(it)) continue;
        bool seen = false;
        for (int i = 0; i < *n && !seen; i++) seen = !strcmp((*names)[i], it->valuestring);
        if (!seen && !((*names)[(*n)++] = strdup(it->valuestring))) st = us_fail(e, US_ENOMEM, "out of memory");
    }
    cJSON_Delete(root);
    if (!st && !*n) st = us_fail(e, US_EFORMAT, "%s: empty weight_map", idx);
    return st;
}

static void to_dtype(void *dst, const float *src, us_dtype dt, size_t n) {
    if (dt == US_DT_F32) {
        memcpy(dst, src, n * 4);
    } else {
        uint16_t *h = dst;
        for (size_t i = 0; i < n; i++) h[i] = dt == US_DT_BF16 ? us_f32_to_bf16(src[i]) : us_f32_to_f16(src[i]);
    }
}

/* writes one merged shard into tmp */
static us_status merge_shard(const char *model_dir, const char *shard, const char *tmp, const us_config *cfg,
                             const us_adapter *ad, us_err *e) {
    char src[4096], dst[4200];
    if (snprintf(src, sizeof src, "%s/%s", model_dir, shard) >= (int)sizeof src ||
        snprintf(dst, sizeof dst, "%s/%s", tmp, shard) >= (int)sizeof dst)
        return us_fail(e, US_EINVAL, "%s/%s: path too long", model_dir, shard);
    us_st_file *f;
    us_status st = us_st_open(src, &f, e);
    if (st) return st;
    const us_lora_config *lc = us_adapter_config(ad);
    float s = (float)us_lora_scaling(lc);
    size_t n = us_st_count(f);
    us_st_write_tensor *ts = calloc(n ? n : 1, sizeof *ts);
    void **owned = calloc(n ? n : 1, sizeof *owned);
    if (!ts || !owned) st = us_fail(e, US_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !st; i++) {
        const us_st_tensor *t = us_st_at(f, i);
        ts[i] = (us_st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
        int l, tg;
        if (!parse_proj(t->name, &l, &tg) || !(lc->targets & (1u << tg)) || l >= cfg->layers) continue;
        int in, out;
        us_target_dims(cfg, tg, &in, &out);
        if (t->ndim != 2 || t->shape[0] != out || t->shape[1] != in) {
            st = us_fail(e, US_EFORMAT, "%s: tensor %s has shape other than [%d, %d]", src, t->name, out, in);
            break;
        }
        if (t->dtype != US_DT_F32 && t->dtype != US_DT_BF16 && t->dtype != US_DT_F16) {
            st = us_fail(e, US_EUNSUPPORTED, "%s: tensor %s: dtype %s cannot be merged (F32, BF16, F16)", src, t->name,
                         us_dtype_name(t->dtype));
            break;
        }
        size_t nw = (size_t)in * out;
        float *w = us_malloc(nw * 4, e, t->name), *A = us_malloc((size_t)lc->r * in * 4, e, "lora_A"),
              *B = us_malloc((size_t)out * lc->r * 4, e, "lora_B");
        owned[i] = us_malloc(nw * us_dtype_size(t->dtype), e, t->name);
        if (!w || !A || !B || !owned[i]) st = US_ENOMEM;
        if (!st) st = us_adapter_read(ad, l, tg, 0, lc->r, in, A, e);
        if (!st) st = us_adapter_read(ad, l, tg, 1, out, lc->r, B, e);
        if (!st) {
            us_convert_to_f32(w, t->data, t->dtype, nw);
            /* W[out, in] += s * B[out, r] A[r, in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, lc->r, s, B, lc->r, A, in, 1.0f, w, in);
            to_dtype(owned[i], w, t->dtype, nw);
            ts[i].data = owned[i];
        }
        free(w);
        free(A);
        free(B);
    }
    const char *meta[] = {"format", "pt"};
    if (!st) st = us_st_write(dst, ts, n, meta, 1, e);
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(ts);
    us_st_close(f);
    return st;
}

static const char *const COPIED[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                     "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
                                     "added_tokens.json", "chat_template.jinja", "chat_template.json",
                                     "model.safetensors.index.json"};

us_status us_merge_adapter(const char *model_dir, const char *adapter_dir, const char *out_dir, us_err *e) {
    struct stat sb;
    if (stat(out_dir, &sb) == 0) {
        DIR *d = S_ISDIR(sb.st_mode) ? opendir(out_dir) : NULL;
        if (!d) return us_fail(e, US_EINVAL, "--out %s: exists and is not a directory", out_dir);
        struct dirent *de;
        bool empty = true;
        while ((de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = false;
        closedir(d);
        if (!empty) return us_fail(e, US_EINVAL, "--out %s: exists and is not empty (nothing was written)", out_dir);
    }
    us_config cfg;
    us_status st = us_config_load(model_dir, &cfg, e);
    if (st) return st;
    us_adapter *ad;
    if ((st = us_adapter_open(adapter_dir, &ad, e))) return st;
    /* every adapter tensor must have a home: check shapes before writing anything */
    const us_lora_config *lc = us_adapter_config(ad);
    for (int l = 0; l < cfg.layers && !st; l++)
        for (int t = 0; t < US_T_COUNT && !st; t++) {
            if (!(lc->targets & (1u << t))) continue;
            int in, out;
            us_target_dims(&cfg, t, &in, &out);
            float *tmpA = malloc((size_t)lc->r * in * 4), *tmpB = malloc((size_t)out * lc->r * 4);
            if (!tmpA || !tmpB) st = us_fail(e, US_ENOMEM, "out of memory");
            if (!st) st = us_adapter_read(ad, l, t, 0, lc->r, in, tmpA, e);
            if (!st) st = us_adapter_read(ad, l, t, 1, out, lc->r, tmpB, e);
            free(tmpA);
            free(tmpB);
        }
    char **shards = NULL;
    int n_shards = 0;
    bool sharded;
    if (!st) st = list_shards(model_dir, &shards, &n_shards, &sharded, e);
    char tmp[4200] = "";
    if (!st) {
        snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", out_dir);
        if (!mkdtemp(tmp)) {
            st = us_fail(e, US_EIO, "%s: cannot create a temporary directory beside it: %s", out_dir, strerror(errno));
            tmp[0] = 0;
        }
    }
    for (int i = 0; i < n_shards && !st; i++) st = merge_shard(model_dir, shards[i], tmp, &cfg, ad, e);
    for (size_t i = 0; i < sizeof COPIED / sizeof COPIED[0] && !st; i++) {
        char src[4200], dst[4200];
        if (snprintf(src, sizeof src, "%s/%s", model_dir, COPIED[i]) >= (int)sizeof src ||
            snprintf(dst, sizeof dst, "%s/%s", tmp, COPIED[i]) >= (int)sizeof dst)
            st = us_fail(e, US_EINVAL, "%s/%s: path too long", model_dir, COPIED[i]);
        else if (stat(src, &sb) == 0)
            st = us_copy_file_atomic(src, dst, e);
    }
    if (!st) {
        chmod(tmp, 0755);
        if (stat(out_dir, &sb) == 0) rmdir(out_dir); /* empty, checked above */
        if (rename(tmp, out_dir) != 0) st = us_fail(e, US_EIO, "%s: cannot rename %s onto it: %s", out_dir, tmp, strerror(errno));
    }
    if (st && tmp[0]) rm_tree(tmp);
    for (int i = 0; i < n_shards; i++) free(shards[i]);
    free(shards);
    us_adapter_close(ad);
    return st;
}
