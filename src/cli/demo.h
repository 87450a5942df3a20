/* demo.h — `unswag demo`: the end-to-end tour with nothing downloaded (see cmd_demo.c).
 * Exposed so the test suite can run a short setting and assert on the accuracies. */
#ifndef US_DEMO_H
#define US_DEMO_H

#include "core/common.h"

typedef struct us_demo_opts {
    const char *out_dir;   /* everything is written below it */
    const char *device;    /* "auto" (cuda when it works, else cpu), "cpu", "cuda" */
    bool quick;            /* fewer steps: for tests */
    bool quiet;            /* nothing printed (tests) */
    int threads;
    uint64_t seed;
} us_demo_opts;

typedef struct us_demo_result {
    double acc_before, acc_after;        /* exact-match accuracy on held-out examples of the new task */
    double pre_acc;                      /* the pretrained model on its own tasks (held out) */
    double loss_pre_first, loss_pre_last, loss_ft_first, loss_ft_last;
    double seconds;
    int held_out;
} us_demo_result;

us_status us_demo_run(const us_demo_opts *o, us_demo_result *r, us_err *e);

#endif
