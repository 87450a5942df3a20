/* test_cli_config.c — `--config FILE.yaml`: options from a file, the command line overriding.
 *
 * The expansion is checked directly (scalars, lists, booleans, underscores, the order that lets
 * the command line win, errors naming the file and line), then end to end: `unswag train
 * --config` on a fixture with the rank and step count in the file and the step count overridden
 * on the command line — the adapter written must have the file's rank, the metrics the command
 * line's number of steps. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/config_file.h"
#include "io/adapter.h"
#include "test.h"

TEST(cli_config_expand) {
    char path[600];
    snprintf(path, sizeof path, "%s/run.yaml", us_test_tmpdir());
    const char *yaml = "# a run\nlora-r: 4\nlora_alpha: 8\nlora-targets: [q_proj, v_proj]\nno-shuffle: true\n"
                       "full: false\nlr: \"2e-3\"\n";
    CHECK(!us_test_write(path, yaml, strlen(yaml)), "write");
    char *argv[] = {"--steps", "3", "--config", path, "--lr", "1e-3", NULL};
    int n;
    char **v;
    us_err e = {{0}};
    CHECK(!us_config_expand(6, argv, &n, &v, &e), "%s", e.msg);
    const char *want[] = {"--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj", "--no-shuffle",
                          "--lr", "2e-3", "--steps", "3", "--lr", "1e-3"};
    int nw = (int)(sizeof want / sizeof want[0]);
    CHECK(n == nw, "%d arguments, want %d", n, nw);
    for (int i = 0; i < nw; i++) CHECK(!strcmp(v[i], want[i]), "argument %d: %s, want %s", i, v[i], want[i]);
    CHECK(v[n] == NULL, "not NULL-terminated");
    us_config_argv_free(n, v);
    /* errors name the file and line */
    const char *bad = "lora-r: 4\nnested:\n  a: 1\n";
    CHECK(!us_test_write(path, bad, strlen(bad)), "write");
    CHECK(us_config_expand(6, argv, &n, &v, &e) && strstr(e.msg, "run.yaml:2") && strstr(e.msg, "nested"), "nested: %s",
          e.msg);
    const char *broken = "lora-r: [4\n";
    CHECK(!us_test_write(path, broken, strlen(broken)), "write");
    CHECK(us_config_expand(6, argv, &n, &v, &e) && strstr(e.msg, "run.yaml"), "malformed: %s", e.msg);
    char *missing[] = {"--config", "/nonexistent.yaml", NULL};
    CHECK(us_config_expand(2, missing, &n, &v, &e) && strstr(e.msg, "/nonexistent.yaml"), "missing: %s", e.msg);
}

TEST(cli_config_train_end_to_end) {
    const char *dir = us_test_tmpdir();
    char cfg[600], cmd[4096], out[8192], self[1500], metrics[700], ad[700];
    snprintf(cfg, sizeof cfg, "%s/run.yaml", dir);
    snprintf(metrics, sizeof metrics, "%s/m.jsonl", dir);
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "model: " FIXTURES "/mistral_mlp/model\ndata: " FIXTURES "/mistral_mlp/data.jsonl\nout: %s\n"
             "lora-r: 4\nlora-targets: [q_proj, down_proj]\nsteps: 5\nmetrics: %s\nquiet: true\n",
             ad, metrics);
    CHECK(!us_test_write(cfg, yaml, strlen(yaml)), "write");
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(sl > 0, "readlink");
    self[sl] = 0;
    *strrchr(self, '/') = 0;
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s/unswag train --config %s --steps 2", self, cfg);
    int rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "train --config failed (%d): %.1000s", rc, out);
    us_adapter *a;
    us_err e = {{0}};
    CHECK(!us_adapter_open(ad, &a, &e), "%s", e.msg);
    bool ok = us_adapter_config(a)->r == 4 && us_adapter_config(a)->targets == ((1u << US_T_Q) | (1u << US_T_DOWN));
    us_adapter_close(a);
    CHECK(ok, "the adapter does not have the file's rank and targets");
    char *m;
    size_t len;
    CHECK(!us_read_file(metrics, &m, &len, &e), "%s", e.msg);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += m[i] == '\n';
    free(m);
    CHECK(lines == 2, "%d steps ran; the command line's --steps 2 should override the file's 5", lines);
}
