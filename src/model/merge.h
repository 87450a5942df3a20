/* merge.h — folding a LoRA adapter into its base: a plain Hugging Face checkpoint.
 *
 * For every adapted projection W [out, in]: W' = W + s * B A (s = alpha/r, or alpha/sqrt(r) with
 * rsLoRA), computed in f32 and rounded once to the base's dtype (F32, BF16 or F16, round to
 * nearest even). Every other tensor is copied byte for byte. The output mirrors the base: the
 * same shard files with the same tensors in each (and model.safetensors.index.json when the
 * base is sharded), config.json, generation_config.json and the tokenizer files copied.
 * Atomic: everything is written into a temporary directory beside out_dir and renamed onto it
 * at the end, so out_dir holds nothing unless the whole merge succeeded; an existing non-empty
 * out_dir is refused before any work. */
#ifndef US_MERGE_H
#define US_MERGE_H

#include "core/common.h"

us_status us_merge_adapter(const char *model_dir, const char *adapter_dir, const char *out_dir, us_err *e);

#endif
