/* test_leaks.c — a whole training run (load, train with checkpoints, resume, save) is leak-free.
 *
 * Under `make asan` the CLI beside the test binary is the ASan build: it runs with
 * ASAN_OPTIONS=detect_leaks=1, and LeakSanitizer's report (or exit status) fails the test. In the
 * normal build the same run goes through valgrind (Debian package valgrind, installed by
 * scripts/deps.sh) with --leak-check=full; a definite leak or a memory error fails it. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "test_cli_util.h"

#define FIX FIXTURES "/llama_silu_gqa_tied"

TEST(leaks_training_run) {
    const char *tmp = us_test_tmpdir();
    static char o[65536];
    char args[4096];
    snprintf(args, sizeof args,
             "train --model " FIX "/model --data " FIX "/data.jsonl --out %s/out --steps 2 --batch 2 --lora-r 4 "
             "--save-every 1 --metrics %s/m.jsonl ",
             tmp, tmp);
    bool asan = strstr(cu_cli(), "asan") != NULL;
    /* a plain run leaves checkpoint-1 (checkpoint-2 removed): the checked run then resumes from
     * it — restoring state, training a step, saving a checkpoint and the adapter */
    int rc = cu_run(o, sizeof o, CU_ENV "%s %s && rm -rf %s/out/checkpoint-2", cu_cli(), args, tmp);
    CHECK(rc == 0, "preparing run exited %d:\n%s", rc, cu_tail(o));
    if (asan)
        rc = cu_run(o, sizeof o, CU_ENV "ASAN_OPTIONS=detect_leaks=1 %s %s --resume", cu_cli(), args);
    else
        rc = cu_run(o, sizeof o,
                    CU_ENV "valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 "
                           "--show-leak-kinds=definite %s %s --resume",
                    cu_cli(), args);
    CHECK(rc == 0, "%s run exited %d:\n%s", asan ? "LeakSanitizer" : "valgrind", rc, cu_tail(o));
    CHECK(!strstr(o, "LeakSanitizer") && !strstr(o, "definitely lost: 1"), "leak report:\n%s", cu_tail(o));
    if (!asan) CHECK(strstr(o, "ERROR SUMMARY: 0 errors"), "valgrind did not run cleanly:\n%s", cu_tail(o));
}
