/* config.c — reads a Hugging Face config.json into us_config (see model/config.h).
 *
 * The family comes from "architectures" (first entry), falling back on "model_type" when the
 * list is absent or empty. Every value goes through a typed getter that distinguishes absent or
 * null (default, or an error for required keys), the wrong JSON type, and out-of-range values,
 * and each message names the source and the key. RoPE is read from transformers-5
 * "rope_parameters" when present, else from transformers-4 "rope_theta" + "rope_scaling"; the
 * scaling object is validated per type (default, linear, llama3) and other types are refused
 * as unsupported rather than silently ignored. */
#include "model/config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/jsonutil.h"

#define CFG_MAX_DIM (1 << 24)
#define CFG_MAX_LAYERS 10000

typedef struct {
    const char *where;
    us_err *e;
} cctx;

static const cJSON *item(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Integer key in [lo, hi]; absent/null gives def, or an error when def_ok is false. */
static us_status get_int(cctx *c, const cJSON *o, const char *prefix, const char *key, bool required, int def,
                         int64_t lo, int64_t hi, int *out) {
    const cJSON *v = item(o, key);
    if (!v) {
        if (required)
            return us_fail(c->e, US_EFORMAT, "%s: missing required key \"%s%s\"", c->where, prefix, key);
        *out = def;
        return US_OK;
    }
    if (!cJSON_IsNumber(v))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" must be an integer, got %s", c->where, prefix, key,
                       us_json_type_name(v));
    int64_t i;
    if (!us_json_int_in(v, INT64_MIN / 2, INT64_MAX / 2, &i))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" must be an integer, got %g", c->where, prefix, key,
                       v->valuedouble);
    if (i < lo || i > hi)
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" = %lld is out of range [%lld, %lld]", c->where, prefix,
                       key, (long long)i, (long long)lo, (long long)hi);
    *out = (int)i;
    return US_OK;
}

/* Finite number key with lo < value (lo_open) or lo <= value, and value <= hi. */
static us_status get_num(cctx *c, const cJSON *o, const char *prefix, const char *key, bool required, double def,
                         double lo, bool lo_open, double hi, double *out) {
    const cJSON *v = item(o, key);
    if (!v) {
        if (required)
            return us_fail(c->e, US_EFORMAT, "%s: missing required key \"%s%s\"", c->where, prefix, key);
        *out = def;
        return US_OK;
    }
    if (!cJSON_IsNumber(v))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" must be a number, got %s", c->where, prefix, key,
                       us_json_type_name(v));
    double d = v->valuedouble;
    if (!isfinite(d) || (lo_open ? d <= lo : d < lo) || d > hi)
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" = %g is out of range %s%g, %g]", c->where, prefix, key, d,
                       lo_open ? "(" : "[", lo, hi);
    *out = d;
    return US_OK;
}

static us_status get_bool(cctx *c, const cJSON *o, const char *key, bool def, bool *out) {
    const cJSON *v = item(o, key);
    if (!v) {
        *out = def;
        return US_OK;
    }
    if (!cJSON_IsBool(v))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s\" must be true or false, got %s", c->where, key,
                       us_json_type_name(v));
    *out = cJSON_IsTrue(v);
    return US_OK;
}

/* bos/eos: an integer, a list whose first entry is used, or null/absent (-1). */
static us_status get_token_id(cctx *c, const cJSON *o, const char *key, int *out) {
    const cJSON *v = item(o, key);
    *out = -1;
    if (!v) return US_OK;
    if (cJSON_IsArray(v)) {
        v = v->child;
        if (!v) return US_OK;
    }
    int64_t i;
    if (!us_json_int_in(v, 0, INT32_MAX, &i))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s\" must be a non-negative integer or a list of them", c->where,
                       key);
    *out = (int)i;
    return US_OK;
}

#define TRY(x)                                                                                                        \
    do {                                                                                                              \
        us_status st_ = (x);                                                                                          \
        if (st_) return st_;                                                                                          \
    } while (0)

/* Reads rope type and its parameters from obj (rope_scaling or rope_parameters), named `name`. */
static us_status parse_rope_object(cctx *c, const cJSON *obj, const char *name, us_config *cfg) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", name);
    if (!cJSON_IsObject(obj))
        return us_fail(c->e, US_EFORMAT, "%s: key \"%s\" must be an object or null, got %s", c->where, name,
                       us_json_type_name(obj));
    const cJSON *ty = item(obj, "rope_type");
    const char *tykey = "rope_type";
    if (!ty) {
        ty = item(obj, "type");
        tykey = "type";
    }
    const char *type = "default";
    if (ty) {
        if (!cJSON_IsString(ty))
            return us_fail(c->e, US_EFORMAT, "%s: key \"%s%s\" must be a string, got %s", c->where, prefix, tykey,
                           us_json_type_name(ty));
        type = ty->valuestring;
    }
    if (strcmp(type, "default") == 0) {
        cfg->rope_type = US_ROPE_DEFAULT;
    } else if (strcmp(type, "linear") == 0) {
        cfg->rope_type = US_ROPE_LINEAR;
        TRY(get_num(c, obj, prefix, "factor", true, 1.0, 0.0, true, 1e6, &cfg->rope_factor));
    } else if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = US_ROPE_LLAMA3;
        TRY(get_num(c, obj, prefix, "factor", true, 1.0, 0.0, true, 1e6, &cfg->rope_factor));
        TRY(get_num(c, obj, prefix, "low_freq_factor", true, 1.0, 0.0, true, 1e6, &cfg->rope_low_freq));
        TRY(get_num(c, obj, prefix, "high_freq_factor", true, 4.0, 0.0, true, 1e6, &cfg->rope_high_freq));
        TRY(get_int(c, obj, prefix, "original_max_position_embeddings", true, 0, 1, CFG_MAX_DIM - 1,
                    &cfg->rope_orig_max_pos));
        if (!(cfg->rope_high_freq > cfg->rope_low_freq))
            return us_fail(c->e, US_EFORMAT, "%s: key \"%shigh_freq_factor\" (%g) must exceed low_freq_factor (%g)",
                           c->where, prefix, cfg->rope_high_freq, cfg->rope_low_freq);
    } else {
        return us_fail(c->e, US_EUNSUPPORTED,
                       "%s: key \"%s%s\" = \"%s\" is not supported (supported: default, linear, llama3)", c->where,
                       prefix, tykey, type);
    }
    return US_OK;
}

static us_status parse_rope(cctx *c, const cJSON *root, us_config *cfg) {
    cfg->rope_type = US_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_low_freq = 1.0;
    cfg->rope_high_freq = 4.0;
    cfg->rope_orig_max_pos = 0;
    TRY(get_num(c, root, "", "rope_theta", false, 10000.0, 0.0, true, 1e12, &cfg->rope_theta));
    const cJSON *params = item(root, "rope_parameters");
    if (params) {
        if (!cJSON_IsObject(params))
            return us_fail(c->e, US_EFORMAT, "%s: key \"rope_parameters\" must be an object, got %s", c->where,
                           us_json_type_name(params));
        TRY(get_num(c, params, "rope_parameters.", "rope_theta", false, cfg->rope_theta, 0.0, true, 1e12,
                    &cfg->rope_theta));
        return parse_rope_object(c, params, "rope_parameters", cfg);
    }
    const cJSON *scaling = item(root, "rope_scaling");
    if (scaling) return parse_rope_object(c, scaling, "rope_scaling", cfg);
    return US_OK;
}

typedef enum { FAM_NONE, FAM_LLAMA, FAM_MISTRAL, FAM_QWEN2 } family;

static const struct {
    const char *arch, *model_type;
    family fam;
} families[] = {
    {"LlamaForCausalLM", "llama", FAM_LLAMA},
    {"MistralForCausalLM", "mistral", FAM_MISTRAL},
    {"Qwen2ForCausalLM", "qwen2", FAM_QWEN2},
};
#define N_FAMILIES (sizeof families / sizeof families[0])

static us_status parse_family(cctx *c, const cJSON *root, us_config *cfg, family *fam) {
    const cJSON *archs = item(root, "architectures");
    const cJSON *mt = item(root, "model_type");
    if (mt && !cJSON_IsString(mt))
        return us_fail(c->e, US_EFORMAT, "%s: key \"model_type\" must be a string, got %s", c->where,
                       us_json_type_name(mt));
    if (archs && !cJSON_IsArray(archs))
        return us_fail(c->e, US_EFORMAT, "%s: key \"architectures\" must be a list of strings, got %s", c->where,
                       us_json_type_name(archs));
    if (archs && archs->child) {
        const cJSON *a = archs->child;
        if (!cJSON_IsString(a))
            return us_fail(c->e, US_EFORMAT, "%s: key \"architectures\" must be a list of strings, got %s in it",
                           c->where, us_json_type_name(a));
        for (size_t i = 0; i < N_FAMILIES; i++)
            if (strcmp(a->valuestring, families[i].arch) == 0) {
                *fam = families[i].fam;
                snprintf(cfg->arch, sizeof cfg->arch, "%s", families[i].arch);
                snprintf(cfg->model_type, sizeof cfg->model_type, "%s", families[i].model_type);
                return US_OK;
            }
        return us_fail(c->e, US_EUNSUPPORTED,
                       "%s: key \"architectures\": %s is not supported (supported: LlamaForCausalLM, "
                       "MistralForCausalLM, Qwen2ForCausalLM)",
                       c->where, a->valuestring);
    }
    if (!mt)
        return us_fail(c->e, US_EFORMAT, "%s: missing both \"architectures\" and \"model_type\"", c->where);
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(mt->valuestring, families[i].model_type) == 0) {
            *fam = families[i].fam;
            snprintf(cfg->arch, sizeof cfg->arch, "%s", families[i].arch);
            snprintf(cfg->model_type, sizeof cfg->model_type, "%s", families[i].model_type);
            return US_OK;
        }
    return us_fail(c->e, US_EUNSUPPORTED, "%s: key \"model_type\": \"%s\" is not supported (supported: llama, "
                   "mistral, qwen2)", c->where, mt->valuestring);
}

/* Qwen2 slides the window only on some layers; we support none or all of them. */
static us_status parse_qwen2_window(cctx *c, const cJSON *root, us_config *cfg) {
    bool use;
    TRY(get_bool(c, root, "use_sliding_window", false, &use));
    int window;
    TRY(get_int(c, root, "", "sliding_window", false, 0, 0, INT32_MAX, &window));
    cfg->sliding_window = 0;
    if (!use || window == 0) return US_OK;
    const cJSON *types = item(root, "layer_types");
    int n_sliding = 0;
    if (types) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->layers)
            return us_fail(c->e, US_EFORMAT, "%s: key \"layer_types\" must be a list of %d strings", c->where,
                           cfg->layers);
        for (const cJSON *t = types->child; t; t = t->next) {
            if (cJSON_IsString(t) && strcmp(t->valuestring, "sliding_attention") == 0)
                n_sliding++;
            else if (!cJSON_IsString(t) || strcmp(t->valuestring, "full_attention") != 0)
                return us_fail(c->e, US_EUNSUPPORTED, "%s: key \"layer_types\" has an unsupported entry", c->where);
        }
    } else {
        int mwl;
        TRY(get_int(c, root, "", "max_window_layers", false, 28, 0, INT32_MAX, &mwl));
        n_sliding = mwl >= cfg->layers ? 0 : cfg->layers - mwl;
    }
    if (n_sliding == 0) return US_OK;
    if (n_sliding != cfg->layers)
        return us_fail(c->e, US_EUNSUPPORTED,
                       "%s: key \"use_sliding_window\": a sliding window on %d of %d layers is not supported", c->where,
                       n_sliding, cfg->layers);
    cfg->sliding_window = window;
    return US_OK;
}

static us_status parse_root(cctx *c, const cJSON *root, us_config *cfg) {
    if (!cJSON_IsObject(root))
        return us_fail(c->e, US_EFORMAT, "%s: must be a JSON object, got %s", c->where, us_json_type_name(root));
    family fam = FAM_NONE;
    TRY(parse_family(c, root, cfg, &fam));

    TRY(get_int(c, root, "", "vocab_size", true, 0, 1, CFG_MAX_DIM - 1, &cfg->vocab));
    TRY(get_int(c, root, "", "hidden_size", true, 0, 1, CFG_MAX_DIM - 1, &cfg->hidden));
    TRY(get_int(c, root, "", "intermediate_size", true, 0, 1, CFG_MAX_DIM - 1, &cfg->inter));
    TRY(get_int(c, root, "", "num_hidden_layers", true, 0, 1, CFG_MAX_LAYERS - 1, &cfg->layers));
    TRY(get_int(c, root, "", "num_attention_heads", true, 0, 1, CFG_MAX_DIM - 1, &cfg->heads));
    TRY(get_int(c, root, "", "num_key_value_heads", false, cfg->heads, 1, CFG_MAX_DIM - 1, &cfg->kv_heads));
    TRY(get_int(c, root, "", "max_position_embeddings", false, 2048, 1, INT32_MAX, &cfg->max_pos));
    if (cfg->heads % cfg->kv_heads != 0)
        return us_fail(c->e, US_EFORMAT,
                       "%s: key \"num_key_value_heads\" = %d does not divide num_attention_heads = %d", c->where,
                       cfg->kv_heads, cfg->heads);
    if (item(root, "head_dim")) {
        TRY(get_int(c, root, "", "head_dim", true, 0, 1, CFG_MAX_DIM - 1, &cfg->head_dim));
    } else {
        if (cfg->hidden % cfg->heads != 0)
            return us_fail(c->e, US_EFORMAT,
                           "%s: key \"num_attention_heads\" = %d does not divide hidden_size = %d (and no head_dim "
                           "is given)",
                           c->where, cfg->heads, cfg->hidden);
        cfg->head_dim = cfg->hidden / cfg->heads;
    }
    if (cfg->head_dim % 2 != 0)
        return us_fail(c->e, US_EFORMAT, "%s: key \"head_dim\" = %d must be even for rotary embeddings", c->where,
                       cfg->head_dim);
    if ((int64_t)cfg->heads * cfg->head_dim >= CFG_MAX_DIM)
        return us_fail(c->e, US_EFORMAT, "%s: num_attention_heads x head_dim = %lld is too large", c->where,
                       (long long)cfg->heads * cfg->head_dim);

    const cJSON *act = item(root, "hidden_act");
    if (act && !cJSON_IsString(act))
        return us_fail(c->e, US_EFORMAT, "%s: key \"hidden_act\" must be a string, got %s", c->where,
                       us_json_type_name(act));
    const char *an = act ? act->valuestring : "silu";
    if (strcmp(an, "silu") == 0 || strcmp(an, "swish") == 0)
        cfg->act = US_ACT_SILU;
    else if (strcmp(an, "relu") == 0)
        cfg->act = US_ACT_RELU;
    else
        return us_fail(c->e, US_EUNSUPPORTED, "%s: key \"hidden_act\" = \"%s\" is not supported (supported: silu, relu)",
                       c->where, an);

    TRY(get_num(c, root, "", "rms_norm_eps", false, 1e-6, 0.0, true, 1.0, &cfg->rms_eps));
    TRY(parse_rope(c, root, cfg));
    TRY(get_bool(c, root, "tie_word_embeddings", false, &cfg->tie_embeddings));

    if (fam == FAM_QWEN2) {
        cfg->qkv_bias = true;
        cfg->o_bias = false;
        cfg->mlp_bias = false;
        TRY(parse_qwen2_window(c, root, cfg));
    } else if (fam == FAM_MISTRAL) { /* transformers builds Mistral's projections without biases */
        cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = false;
        TRY(get_int(c, root, "", "sliding_window", false, 0, 0, INT32_MAX, &cfg->sliding_window));
    } else {
        bool ab;
        TRY(get_bool(c, root, "attention_bias", false, &ab));
        cfg->qkv_bias = cfg->o_bias = ab;
        TRY(get_bool(c, root, "mlp_bias", false, &cfg->mlp_bias));
        cfg->sliding_window = 0;
    }
    TRY(get_token_id(c, root, "bos_token_id", &cfg->bos_id));
    TRY(get_token_id(c, root, "eos_token_id", &cfg->eos_id));
    return US_OK;
}

us_status us_config_parse(const char *json, size_t len, const char *where, us_config *cfg, us_err *e) {
    memset(cfg, 0, sizeof *cfg);
    if (!where) where = "config.json";
    if (!json) return us_fail(e, US_EINVAL, "%s: no text to parse", where);
    cJSON *root;
    us_status st = us_json_parse(json, len, where, &root, e);
    if (st) return st;
    cctx c = {where, e};
    us_config tmp;
    memset(&tmp, 0, sizeof tmp);
    st = parse_root(&c, root, &tmp);
    cJSON_Delete(root);
    if (st == US_OK) *cfg = tmp;
    return st;
}

us_status us_config_load(const char *path, us_config *cfg, us_err *e) {
    memset(cfg, 0, sizeof *cfg);
    if (!path) return us_fail(e, US_EINVAL, "no config path given");
    struct stat sb;
    if (stat(path, &sb) != 0) return us_fail(e, US_EIO, "%s: cannot open: %s", path, strerror(errno));
    char file[4096];
    if (S_ISDIR(sb.st_mode)) {
        if (!us_path_join(file, sizeof file, path, "config.json"))
            return us_fail(e, US_EINVAL, "%s: path too long", path);
    } else {
        if (strlen(path) >= sizeof file) return us_fail(e, US_EINVAL, "%s: path too long", path);
        strcpy(file, path);
    }
    char *text;
    size_t len;
    us_status st = us_read_file(file, &text, &len, e);
    if (st) return st;
    st = us_config_parse(text, len, file, cfg, e);
    free(text);
    return st;
}
