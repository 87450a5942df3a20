/* adapter.c — PEFT LoRA adapter directories: target lists, open/validate, read, save.
 *
 * Opening reads adapter_config.json, refuses every PEFT feature we would otherwise silently
 * mis-apply (non-LORA types, DoRA, biases, fan_in_fan_out, per-module rank/alpha patterns,
 * layer subsets, modules_to_save), then opens adapter_model.safetensors and checks every tensor:
 * the name must be a LoRA A/B weight of a known projection that target_modules lists, A must be
 * [r, in] and B [out, r] in a floating dtype, and each A must have its B. The model dimensions
 * are checked later, by us_adapter_read, which knows the expected shape. Saving writes the
 * weights (F32) and then a config that PEFT's from_pretrained accepts, both atomically. */
#include "io/adapter.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/jsonutil.h"
#include "io/safetensors.h"

#define ADAPTER_MAX_LAYERS 10000

static const char *const target_names[US_T_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

const char *us_target_name(int target) {
    return (target >= 0 && target < US_T_COUNT) ? target_names[target] : "?";
}

static int target_from_name(const char *s, size_t len) {
    for (int i = 0; i < US_T_COUNT; i++)
        if (strlen(target_names[i]) == len && strncmp(s, target_names[i], len) == 0) return i;
    return -1;
}

static bool is_attn(int target) { return target <= US_T_O; }

us_status us_targets_parse(const char *list, unsigned *mask, us_err *e) {
    *mask = 0;
    if (!list) return us_fail(e, US_EINVAL, "LoRA targets: no list given");
    unsigned m = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *b = p, *en = end;
        while (b < en && (*b == ' ' || *b == '\t')) b++;
        while (en > b && (en[-1] == ' ' || en[-1] == '\t')) en--;
        size_t len = (size_t)(en - b);
        if (len == 0)
            return us_fail(e, US_EINVAL, "LoRA targets \"%s\": empty entry (expected a comma list of q_proj, k_proj, "
                           "v_proj, o_proj, gate_proj, up_proj, down_proj, or all)", list);
        if ((len == 3 && strncmp(b, "all", 3) == 0) || (len == 10 && strncmp(b, "all-linear", 10) == 0)) {
            m |= (1u << US_T_COUNT) - 1;
        } else {
            int t = target_from_name(b, len);
            if (t < 0)
                return us_fail(e, US_EINVAL, "LoRA targets \"%s\": unknown module \"%.*s\" (expected q_proj, k_proj, "
                               "v_proj, o_proj, gate_proj, up_proj, down_proj, or all)", list, (int)len, b);
            m |= 1u << t;
        }
        if (!comma) break;
        p = comma + 1;
    }
    *mask = m;
    return US_OK;
}

double us_lora_scaling(const us_lora_config *c) {
    if (c->r <= 0) return 0.0;
    return c->rslora ? c->alpha / sqrt((double)c->r) : c->alpha / (double)c->r;
}

void us_adapter_tensor_name(char *buf, size_t cap, int layer, int target, int is_b) {
    snprintf(buf, cap, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer,
             is_attn(target) ? "self_attn" : "mlp", us_target_name(target), is_b ? 'B' : 'A');
}

struct us_adapter {
    char *st_path;
    us_lora_config cfg;
    us_st_file *f;
};

const us_lora_config *us_adapter_config(const us_adapter *a) { return &a->cfg; }

void us_adapter_close(us_adapter *a) {
    if (!a) return;
    us_st_close(a->f);
    free(a->st_path);
    free(a);
}

/* ---------------------------------------------------------------- config */

static const cJSON *item(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static us_status cfg_bool(const char *where, const cJSON *root, const char *key, bool *out, us_err *e) {
    const cJSON *v = item(root, key);
    *out = false;
    if (!v) return US_OK;
    if (!cJSON_IsBool(v))
        return us_fail(e, US_EFORMAT, "%s: key \"%s\" must be true or false, got %s", where, key,
                       us_json_type_name(v));
    *out = cJSON_IsTrue(v);
    return US_OK;
}

/* A key that must be absent, null, or an empty object/list; anything else is unsupported. */
static us_status cfg_empty(const char *where, const cJSON *root, const char *key, const char *what, us_err *e) {
    const cJSON *v = item(root, key);
    if (!v) return US_OK;
    if ((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child) return US_OK;
    return us_fail(e, US_EUNSUPPORTED, "%s: key \"%s\" is set; %s is not supported", where, key, what);
}

static us_status parse_targets(const char *where, const cJSON *tm, unsigned *mask, us_err *e) {
    *mask = 0;
    if (!tm) return us_fail(e, US_EFORMAT, "%s: missing required key \"target_modules\"", where);
    if (cJSON_IsString(tm)) {
        int t = target_from_name(tm->valuestring, strlen(tm->valuestring));
        if (t < 0)
            return us_fail(e, US_EUNSUPPORTED, "%s: key \"target_modules\" = \"%s\" is not a supported module name "
                           "(regular expressions are not supported)", where, tm->valuestring);
        *mask = 1u << t;
        return US_OK;
    }
    if (!cJSON_IsArray(tm))
        return us_fail(e, US_EFORMAT, "%s: key \"target_modules\" must be a list of strings, got %s", where,
                       us_json_type_name(tm));
    for (const cJSON *v = tm->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return us_fail(e, US_EFORMAT, "%s: key \"target_modules\" must be a list of strings, got %s in it", where,
                           us_json_type_name(v));
        int t = target_from_name(v->valuestring, strlen(v->valuestring));
        if (t < 0)
            return us_fail(e, US_EUNSUPPORTED, "%s: key \"target_modules\": module \"%s\" is not supported (supported: "
                           "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", where, v->valuestring);
        *mask |= 1u << t;
    }
    if (!*mask) return us_fail(e, US_EFORMAT, "%s: key \"target_modules\" is empty", where);
    return US_OK;
}

static us_status parse_config(const char *where, const cJSON *root, us_lora_config *c, us_err *e) {
    if (!cJSON_IsObject(root))
        return us_fail(e, US_EFORMAT, "%s: must be a JSON object, got %s", where, us_json_type_name(root));
    const cJSON *pt = item(root, "peft_type");
    if (!pt) return us_fail(e, US_EFORMAT, "%s: missing required key \"peft_type\"", where);
    if (!cJSON_IsString(pt))
        return us_fail(e, US_EFORMAT, "%s: key \"peft_type\" must be a string, got %s", where, us_json_type_name(pt));
    if (strcmp(pt->valuestring, "LORA") != 0)
        return us_fail(e, US_EUNSUPPORTED, "%s: key \"peft_type\" = \"%s\" is not supported (only LORA)", where,
                       pt->valuestring);
    const cJSON *r = item(root, "r");
    int64_t ri;
    if (!r) return us_fail(e, US_EFORMAT, "%s: missing required key \"r\"", where);
    if (!us_json_int_in(r, 1, 1 << 16, &ri))
        return us_fail(e, US_EFORMAT, "%s: key \"r\" must be an integer in [1, 65536]", where);
    c->r = (int)ri;
    const cJSON *al = item(root, "lora_alpha");
    if (!al) return us_fail(e, US_EFORMAT, "%s: missing required key \"lora_alpha\"", where);
    if (!cJSON_IsNumber(al) || !isfinite(al->valuedouble) || al->valuedouble <= 0)
        return us_fail(e, US_EFORMAT, "%s: key \"lora_alpha\" must be a positive number", where);
    c->alpha = al->valuedouble;
    us_status st = cfg_bool(where, root, "use_rslora", &c->rslora, e);
    if (st) return st;
    bool flag;
    if ((st = cfg_bool(where, root, "use_dora", &flag, e))) return st;
    if (flag) return us_fail(e, US_EUNSUPPORTED, "%s: key \"use_dora\" is true; DoRA is not supported", where);
    if ((st = cfg_bool(where, root, "fan_in_fan_out", &flag, e))) return st;
    if (flag)
        return us_fail(e, US_EUNSUPPORTED, "%s: key \"fan_in_fan_out\" is true; transposed (Conv1D) weights are not "
                       "supported", where);
    if ((st = cfg_bool(where, root, "lora_bias", &flag, e))) return st;
    if (flag) return us_fail(e, US_EUNSUPPORTED, "%s: key \"lora_bias\" is true; LoRA biases are not supported", where);
    const cJSON *bias = item(root, "bias");
    if (bias && !cJSON_IsString(bias))
        return us_fail(e, US_EFORMAT, "%s: key \"bias\" must be a string, got %s", where, us_json_type_name(bias));
    if (bias && strcmp(bias->valuestring, "none") != 0)
        return us_fail(e, US_EUNSUPPORTED, "%s: key \"bias\" = \"%s\" is not supported (only \"none\")", where,
                       bias->valuestring);
    if ((st = cfg_empty(where, root, "rank_pattern", "a per-module rank", e))) return st;
    if ((st = cfg_empty(where, root, "alpha_pattern", "a per-module alpha", e))) return st;
    if ((st = cfg_empty(where, root, "layers_to_transform", "adapting a subset of layers", e))) return st;
    if ((st = cfg_empty(where, root, "modules_to_save", "saving extra trained modules", e))) return st;
    if ((st = cfg_empty(where, root, "exclude_modules", "excluding modules", e))) return st;
    return parse_targets(where, item(root, "target_modules"), &c->targets, e);
}

/* ---------------------------------------------------------------- tensors */

/* Parses a PEFT LoRA tensor name; false when it is not one. */
static bool parse_lora_name(const char *name, int *layer, int *target, int *is_b) {
    static const char prefix[] = "base_model.model.model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0) return false;
    const char *p = name + sizeof prefix - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9')) return false;
    long l = 0;
    while (*p >= '0' && *p <= '9') {
        l = l * 10 + (*p - '0');
        if (l >= ADAPTER_MAX_LAYERS) return false;
        p++;
    }
    char expect[160];
    for (int t = 0; t < US_T_COUNT; t++)
        for (int b = 0; b < 2; b++) {
            snprintf(expect, sizeof expect, ".%s.%s.lora_%c.weight", is_attn(t) ? "self_attn" : "mlp",
                     target_names[t], b ? 'B' : 'A');
            if (strcmp(p, expect) == 0) {
                *layer = (int)l;
                *target = t;
                *is_b = b;
                return true;
            }
        }
    return false;
}

static us_status check_tensors(const us_adapter *a, us_err *e) {
    const char *path = a->st_path;
    size_t n = us_st_count(a->f);
    if (n == 0) return us_fail(e, US_EFORMAT, "%s: holds no LoRA tensors", path);
    for (size_t i = 0; i < n; i++) {
        const us_st_tensor *t = us_st_at(a->f, i);
        int layer, target, is_b;
        if (!parse_lora_name(t->name, &layer, &target, &is_b))
            return us_fail(e, US_EUNSUPPORTED, "%s: unexpected tensor %s (only LoRA A/B weights of q/k/v/o/gate/up/"
                           "down_proj are supported)", path, t->name);
        if (!(a->cfg.targets & (1u << target)))
            return us_fail(e, US_EFORMAT, "%s: tensor %s is for %s, which target_modules does not list", path, t->name,
                           target_names[target]);
        if (t->dtype != US_DT_F32 && t->dtype != US_DT_BF16 && t->dtype != US_DT_F16 && t->dtype != US_DT_F64)
            return us_fail(e, US_EUNSUPPORTED, "%s: tensor %s has dtype %s (expected F32, BF16 or F16)", path, t->name,
                           us_dtype_name(t->dtype));
        int64_t rdim = t->ndim == 2 ? t->shape[is_b ? 1 : 0] : -1;
        if (t->ndim != 2 || rdim != a->cfg.r || t->shape[is_b ? 0 : 1] <= 0) {
            char shape[160];
            size_t k = (size_t)snprintf(shape, sizeof shape, "[");
            for (int d = 0; d < t->ndim && k < sizeof shape; d++)
                k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (k < sizeof shape) snprintf(shape + k, sizeof shape - k, "]");
            return us_fail(e, US_EFORMAT, "%s: tensor %s must be %s with r = %d, got %d dims %s", path, t->name,
                           is_b ? "[out, r]" : "[r, in]", a->cfg.r, t->ndim, shape);
        }
        char other[200];
        us_adapter_tensor_name(other, sizeof other, layer, target, !is_b);
        if (!us_st_find(a->f, other))
            return us_fail(e, US_EFORMAT, "%s: tensor %s has no matching %s", path, t->name, other);
    }
    return US_OK;
}

us_status us_adapter_open(const char *dir, us_adapter **out, us_err *e) {
    *out = NULL;
    if (!dir) return us_fail(e, US_EINVAL, "no adapter directory given");
    struct stat sb;
    if (stat(dir, &sb) != 0) return us_fail(e, US_EIO, "%s: cannot open adapter directory: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return us_fail(e, US_EIO, "%s: not a directory", dir);
    char cfg_path[4096], st_path[4096];
    if (!us_path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json") ||
        !us_path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors"))
        return us_fail(e, US_EINVAL, "%s: path too long", dir);
    char *text;
    size_t len;
    us_status st = us_read_file(cfg_path, &text, &len, e);
    if (st) return st;
    cJSON *root;
    st = us_json_parse(text, len, cfg_path, &root, e);
    free(text);
    if (st) return st;
    us_adapter *a = us_calloc(1, sizeof *a, e, "adapter");
    if (!a) {
        cJSON_Delete(root);
        return US_ENOMEM;
    }
    st = parse_config(cfg_path, root, &a->cfg, e);
    cJSON_Delete(root);
    if (st) goto fail;
    a->st_path = strdup(st_path);
    if (!a->st_path) {
        st = us_fail(e, US_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((st = us_st_open(st_path, &a->f, e))) goto fail;
    if ((st = check_tensors(a, e))) goto fail;
    *out = a;
    return US_OK;
fail:
    us_adapter_close(a);
    return st;
}

us_status us_adapter_read(const us_adapter *a, int layer, int target, int is_b, int64_t rows, int64_t cols,
                          float *dst, us_err *e) {
    if (target < 0 || target >= US_T_COUNT)
        return us_fail(e, US_EINVAL, "%s: invalid LoRA target %d", a->st_path, target);
    char name[200];
    us_adapter_tensor_name(name, sizeof name, layer, target, is_b);
    const us_st_tensor *t = us_st_find(a->f, name);
    if (!t) return us_fail(e, US_EFORMAT, "%s: tensor %s not found", a->st_path, name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return us_fail(e, US_EFORMAT, "%s: tensor %s has shape [%lld, %lld], expected [%lld, %lld]", a->st_path, name,
                       (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)rows,
                       (long long)cols);
    if (!us_convert_to_f32(dst, t->data, t->dtype, (size_t)t->numel))
        return us_fail(e, US_EUNSUPPORTED, "%s: tensor %s has non-floating dtype %s", a->st_path, name,
                       us_dtype_name(t->dtype));
    return US_OK;
}

/* ---------------------------------------------------------------- save */

static us_status mkdir_p(const char *dir, us_err *e) {
    size_t len = strlen(dir);
    if (len == 0) return us_fail(e, US_EINVAL, "empty adapter directory path");
    char *p = us_malloc(len + 1, e, "directory path");
    if (!p) return US_ENOMEM;
    memcpy(p, dir, len + 1);
    us_status st = US_OK;
    for (size_t i = 1; i <= len && !st; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        struct stat sb;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            st = us_fail(e, US_EIO, "%s: cannot create directory %s: %s", dir, p, strerror(errno));
        else if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode))
            st = us_fail(e, US_EIO, "%s: %s exists and is not a directory", dir, p);
        p[i] = c;
    }
    free(p);
    return st;
}

static us_status save_config(const char *dir, const us_lora_config *c, const char *base_model, us_err *e) {
    char path[4096];
    if (!us_path_join(path, sizeof path, dir, "adapter_config.json"))
        return us_fail(e, US_EINVAL, "%s: path too long", dir);
    cJSON *o = cJSON_CreateObject();
    cJSON *tm = cJSON_CreateArray();
    if (!o || !tm) {
        cJSON_Delete(o);
        cJSON_Delete(tm);
        return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    }
    /* target_modules sorted by name, as a set is in PEFT's saved configs. */
    const char *names[US_T_COUNT];
    int nn = 0;
    for (int t = 0; t < US_T_COUNT; t++)
        if (c->targets & (1u << t)) names[nn++] = target_names[t];
    for (int i = 1; i < nn; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *x = names[j];
            names[j] = names[j - 1];
            names[j - 1] = x;
        }
    bool ok = true;
    for (int i = 0; i < nn; i++) ok = ok && cJSON_AddItemToArray(tm, cJSON_CreateString(names[i]));
    ok = ok && cJSON_AddStringToObject(o, "peft_type", "LORA");
    ok = ok && cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    ok = ok && (base_model ? cJSON_AddStringToObject(o, "base_model_name_or_path", base_model)
                           : cJSON_AddNullToObject(o, "base_model_name_or_path"));
    ok = ok && cJSON_AddNumberToObject(o, "r", c->r);
    ok = ok && cJSON_AddNumberToObject(o, "lora_alpha", c->alpha);
    ok = ok && cJSON_AddNumberToObject(o, "lora_dropout", 0.0);
    ok = ok && cJSON_AddItemToObject(o, "target_modules", tm);
    if (!ok) cJSON_Delete(tm); /* not yet owned by o when a step before it failed */
    ok = ok && cJSON_AddBoolToObject(o, "use_rslora", c->rslora);
    ok = ok && cJSON_AddStringToObject(o, "bias", "none");
    ok = ok && cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
    ok = ok && cJSON_AddBoolToObject(o, "init_lora_weights", 1);
    ok = ok && cJSON_AddBoolToObject(o, "inference_mode", 1);
    ok = ok && cJSON_AddBoolToObject(o, "use_dora", 0);
    ok = ok && cJSON_AddNullToObject(o, "modules_to_save");
    ok = ok && cJSON_AddNullToObject(o, "layers_to_transform");
    ok = ok && cJSON_AddNullToObject(o, "layers_pattern");
    ok = ok && cJSON_AddObjectToObject(o, "rank_pattern");
    ok = ok && cJSON_AddObjectToObject(o, "alpha_pattern");
    ok = ok && cJSON_AddNullToObject(o, "revision");
    ok = ok && cJSON_AddStringToObject(o, "peft_version", "0.21.0");
    char *json = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!json) return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    size_t jl = strlen(json);
    char *text = malloc(jl + 2);
    if (!text) {
        free(json);
        return us_fail(e, US_ENOMEM, "%s: out of memory", path);
    }
    memcpy(text, json, jl);
    text[jl] = '\n';
    free(json);
    us_status st = us_write_file_atomic(path, text, jl + 1, e);
    free(text);
    return st;
}

us_status us_adapter_save(const char *dir, const us_lora_config *c, const char *base_model,
                          const us_adapter_pair *pairs, size_t n, us_err *e) {
    if (!dir || !c) return us_fail(e, US_EINVAL, "adapter save: missing directory or config");
    if (c->r <= 0 || c->r > (1 << 16))
        return us_fail(e, US_EINVAL, "%s: LoRA rank %d is out of range [1, 65536]", dir, c->r);
    if (!isfinite(c->alpha) || c->alpha <= 0)
        return us_fail(e, US_EINVAL, "%s: LoRA alpha %g must be a positive number", dir, c->alpha);
    if (!c->targets || (c->targets >> US_T_COUNT))
        return us_fail(e, US_EINVAL, "%s: invalid LoRA target mask 0x%x", dir, c->targets);
    if (n == 0 || !pairs) return us_fail(e, US_EINVAL, "%s: no LoRA weights to save", dir);
    for (size_t i = 0; i < n; i++) {
        const us_adapter_pair *p = &pairs[i];
        if (p->target < 0 || p->target >= US_T_COUNT || !(c->targets & (1u << p->target)))
            return us_fail(e, US_EINVAL, "%s: pair #%zu has target %d, which is not in the target set", dir, i,
                           p->target);
        if (p->layer < 0 || p->layer >= ADAPTER_MAX_LAYERS)
            return us_fail(e, US_EINVAL, "%s: pair #%zu has invalid layer %d", dir, i, p->layer);
        if (p->in <= 0 || p->out <= 0 || p->in >= (1 << 24) || p->out >= (1 << 24) || !p->A || !p->B)
            return us_fail(e, US_EINVAL, "%s: pair #%zu (layer %d %s) has invalid sizes or no data", dir, i, p->layer,
                           target_names[p->target]);
    }
    us_status st = mkdir_p(dir, e);
    if (st) return st;
    char path[4096];
    if (!us_path_join(path, sizeof path, dir, "adapter_model.safetensors"))
        return us_fail(e, US_EINVAL, "%s: path too long", dir);
    us_st_write_tensor *w = us_calloc(2 * n, sizeof *w, e, "adapter tensors");
    char *names = us_calloc(2 * n, 128, e, "adapter tensor names");
    if (!w || !names) {
        free(w);
        free(names);
        return US_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const us_adapter_pair *p = &pairs[i];
        for (int b = 0; b < 2; b++) {
            char *nm = names + (2 * i + (size_t)b) * 128;
            us_adapter_tensor_name(nm, 128, p->layer, p->target, b);
            us_st_write_tensor *t = &w[2 * i + (size_t)b];
            t->name = nm;
            t->dtype = US_DT_F32;
            t->ndim = 2;
            t->shape[0] = b ? p->out : c->r;
            t->shape[1] = b ? c->r : p->in;
            t->data = b ? (const void *)p->B : (const void *)p->A;
        }
    }
    static const char *const meta[] = {"format", "pt"};
    st = us_st_write(path, w, 2 * n, meta, 1, e);
    free(w);
    free(names);
    if (st) return st;
    return save_config(dir, c, base_model, e);
}
