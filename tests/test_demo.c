/* test_demo.c — `unswag demo` in its short setting (--quick) must show learning.
 *
 * The expectations are about the world, not about numbers the code produced: the new task's
 * answers are made by a rule the pretrained model never saw, so before fine-tuning it cannot
 * get them (at most 10% exact), and after LoRA fine-tuning it must (at least 80% exact of the
 * held-out examples, which are drawn from a stream the training rows never use). The pretrained
 * model must solve its own tasks, both losses must fall, and the files the demo announces must
 * exist and be loadable (adapter, model, report). */
#include <stdio.h>
#include <sys/stat.h>

#include "cli/demo.h"
#include "io/adapter.h"
#include "test.h"

static int exists(const char *dir, const char *name) {
    char p[1024];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &sb) == 0 && sb.st_size > 0;
}

TEST(demo_quick_accuracy_rises) {
    char out[600];
    snprintf(out, sizeof out, "%s/demo", us_test_tmpdir());
    us_demo_opts o = {.out_dir = out, .device = "cpu", .quick = true, .quiet = true, .threads = 1, .seed = 1234};
    us_demo_result r;
    us_err e = {{0}};
    fflush(stdout);
    CHECK(!us_demo_run(&o, &r, &e), "%s", e.msg);
    CHECK(r.held_out >= 50, "only %d held-out examples", r.held_out);
    CHECK(r.pre_acc >= 0.9, "pretrained model solves only %.0f%% of its own tasks", 100 * r.pre_acc);
    CHECK(r.acc_before <= 0.10, "new task already solved before fine-tuning: %.0f%%", 100 * r.acc_before);
    CHECK(r.acc_after >= 0.80, "after fine-tuning only %.0f%% exact (before %.0f%%)", 100 * r.acc_after,
          100 * r.acc_before);
    CHECK(r.loss_pre_last < 0.25 * r.loss_pre_first, "pretraining loss %.3f -> %.3f", r.loss_pre_first, r.loss_pre_last);
    CHECK(r.loss_ft_last < 0.25 * r.loss_ft_first, "fine-tuning loss %.3f -> %.3f", r.loss_ft_first, r.loss_ft_last);
    CHECK(exists(out, "base/config.json") && exists(out, "pretrained/model.safetensors") &&
              exists(out, "adapter/adapter_model.safetensors") && exists(out, "report.html"),
          "missing outputs under %s", out);
    char ad[700];
    snprintf(ad, sizeof ad, "%s/adapter", out);
    us_adapter *a;
    CHECK(!us_adapter_open(ad, &a, &e), "%s", e.msg);
    CHECK(us_adapter_config(a)->r == 16 && us_adapter_config(a)->targets == (1u << US_T_COUNT) - 1,
          "adapter is not the default r 16 on all projections");
    us_adapter_close(a);
}
