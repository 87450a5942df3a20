/* test_resume.c — crash-safe checkpoints and exact resume (issue 6), through the CLI.
 *
 * resume_kill_trials: a reference run trains the llama_silu_gqa_tied fixture for 80 steps without
 * checkpoints. Then the same run with --save-every 1 --resume is started again and again and
 * SIGKILLed after a random delay (seeded, so a failure replays) — during model loading, during
 * steps, and inside checkpoint writes, which UNSWAG_TEST_SLOW_SAVE_MS widens — until at least 20
 * kills have landed and a run finishes. After every kill: each checkpoint directory that has a
 * manifest validates (hashes match), and the adapter at the top of --out opens. At the end the
 * --metrics file holds steps 1..80 once each with the reference's losses (same printed digits),
 * and the adapter is byte-identical to the reference's. Kills landing inside a save are counted
 * (a checkpoint directory without manifest, or a temporary file, is left behind) and must occur.
 * resume_sigterm: SIGTERM finishes the step, saves, prints how to resume and exits 0; resuming
 * reproduces the reference. resume_nonfinite_stop: NaN in one embedding row poisons every step
 * that sees that token (mistral_mlp fixture: untied, so the LM head stays finite); K such steps in a row stop the run with exit 1 and a clear message, and
 * the newest checkpoint (params unchanged by the skipped updates) is the adapter left in --out.
 * Also: a fresh run refuses a directory holding checkpoints; a resume with other options names
 * the option; the memory and disk preflights refuse with their breakdowns. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/adapter.h"
#include "test.h"
#include "test_cli_util.h"
#include "train/checkpoint.h"

#define FIX FIXTURES "/llama_silu_gqa_tied"
#define STEPS 40
#define KILL_STEPS 80 /* enough that >= 20 kills land before a run gets through */
#define OUT_CAP 16384

static void train_cmd(char *buf, size_t cap, int steps, const char *model, const char *data, const char *out,
                      const char *metrics, const char *extra) {
    snprintf(buf, cap,
             "%s train --model %s --data %s --out %s --steps %d --batch 2 --lora-r 4 --lr 1e-2 --weight-decay 0.01 "
             "--metrics %s --quiet %s",
             cu_cli(), model, data, out, steps, metrics, extra);
}

/* Starts `sh -c "exec CMD"` with output to log; returns the pid (the CLI itself, after exec). */
static pid_t spawn(const char *cmd, const char *log, const char *env_kv) {
    pid_t pid = fork();
    if (pid == 0) {
        char full[16384 + 1024];
        snprintf(full, sizeof full, "%s exec %s >>%s 2>&1", env_kv ? env_kv : "", cmd, log);
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_rc(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - 1000 * (long)(ms / 1000)) * 1e6)};
    nanosleep(&ts, NULL);
}

/* "step" and "loss" (as printed) of each metrics line; returns the number of lines, -1 on a
 * malformed line. */
static int read_losses(const char *path, int *steps, char (*loss)[32], int cap) {
    char *text = cu_slurp(path, NULL);
    if (!text) return -1;
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (n >= cap) break;
        char *s = strstr(line, "\"step\": "), *l = strstr(line, "\"loss\": ");
        if (!s || !l) {
            free(text);
            return -1;
        }
        steps[n] = atoi(s + 8);
        l += 8;
        size_t k = strcspn(l, ",}");
        snprintf(loss[n], sizeof loss[n], "%.*s", (int)(k < 31 ? k : 31), l);
        n++;
    }
    free(text);
    return n;
}

/* Every checkpoint directory with a manifest validates; returns how many are incomplete
 * (no manifest: a save was interrupted), or -1 (message in msg) when one is corrupt. */
static int check_ckpts(const char *out, char *msg, size_t cap) {
    DIR *d = opendir(out);
    if (!d) return 0;
    int incomplete = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "checkpoint-", 11) != 0) continue;
        char dir[4200], man[4300];
        snprintf(dir, sizeof dir, "%s/%s", out, de->d_name);
        snprintf(man, sizeof man, "%s/manifest.json", dir);
        if (access(man, F_OK) != 0) {
            incomplete++;
            continue;
        }
        us_err e = {{0}};
        if (us_ckpt_validate(dir, NULL, &e)) {
            snprintf(msg, cap, "corrupt checkpoint %s: %s", dir, e.msg);
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return incomplete;
}

static int count_tmp_files(const char *dir) {
    char out[4096];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "find %s -name '*.tmp.*' | wc -l", dir);
    if (us_test_run(cmd, out, sizeof out) != 0) return 0;
    return atoi(out);
}

/* Compares a metrics file with the reference's: steps 1..steps once each, same losses. */
static int same_losses(const char *ref, const char *got, int steps, char *msg, size_t cap) {
    static int s1[KILL_STEPS + 8], s2[KILL_STEPS + 8];
    static char l1[KILL_STEPS + 8][32], l2[KILL_STEPS + 8][32];
    int n1 = read_losses(ref, s1, l1, KILL_STEPS + 8), n2 = read_losses(got, s2, l2, KILL_STEPS + 8);
    if (n1 != steps || n2 != steps) {
        snprintf(msg, cap, "metrics lines: reference %d, resumed %d (expected %d)", n1, n2, steps);
        return 0;
    }
    for (int i = 0; i < steps; i++)
        if (s2[i] != i + 1 || s1[i] != i + 1 || strcmp(l1[i], l2[i]) != 0) {
            snprintf(msg, cap, "metrics line %d: reference step %d loss %s, resumed step %d loss %s", i + 1, s1[i], l1[i],
                     s2[i], l2[i]);
            return 0;
        }
    return 1;
}

static int reference_run(const char *tmp, int steps, char *msg, size_t cap) {
    char cmd[8192], out[OUT_CAP], o[600], m[600];
    snprintf(o, sizeof o, "%s/ref", tmp);
    snprintf(m, sizeof m, "%s/ref.jsonl", tmp);
    train_cmd(cmd, sizeof cmd, steps, FIX "/model", FIX "/data.jsonl", o, m, "");
    int rc = cu_run(out, sizeof out, CU_ENV "%s", cmd);
    if (rc) snprintf(msg, cap, "reference run failed (%d): %s", rc, cu_tail(out));
    return rc;
}

TEST(resume_kill_trials) {
    const char *tmp = us_test_tmpdir();
    char msg[OUT_CAP];
    CHECK(reference_run(tmp, KILL_STEPS, msg, sizeof msg) == 0, "%s", cu_tail(msg));
    char cmd[8192], out[600], metrics[600], log[600], a[700], b[700];
    snprintf(out, sizeof out, "%s/run", tmp);
    snprintf(metrics, sizeof metrics, "%s/run.jsonl", tmp);
    snprintf(log, sizeof log, "%s/run.log", tmp);
    train_cmd(cmd, sizeof cmd, KILL_STEPS, FIX "/model", FIX "/data.jsonl", out, metrics, "--save-every 1 --keep 2 --resume");
    srand(12345);
    int kills = 0, in_save = 0, runs = 0, rc = -1;
    while (runs < 200) {
        runs++;
        pid_t pid = spawn(cmd, log, CU_ENV "UNSWAG_TEST_SLOW_SAVE_MS=3");
        CHECK(pid > 0, "fork failed");
        double delay = kills < 30 ? 10 + rand() % 140 : 1e9; /* after 30 kills let it finish */
        double waited = 0;
        int status = 0;
        pid_t done = 0;
        while (waited < delay && (done = waitpid(pid, &status, WNOHANG)) == 0) {
            sleep_ms(1);
            waited += 1;
        }
        if (done == pid) {
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (rc != 0) {
                char *text = cu_slurp(log, NULL);
                snprintf(msg, sizeof msg, "%s", text ? cu_tail(text) : "");
                free(text);
            }
            CHECK(rc == 0, "run %d exited with %d; log:\n%s", runs, rc, cu_tail(msg));
            break;
        }
        kill(pid, SIGKILL);
        wait_rc(pid);
        kills++;
        int inc = check_ckpts(out, msg, sizeof msg);
        CHECK(inc >= 0, "after kill %d: %s", kills, cu_tail(msg));
        if (inc > 0 || count_tmp_files(out) > 0) in_save++;
        snprintf(a, sizeof a, "%s/adapter_config.json", out);
        if (access(a, F_OK) == 0) {
            us_adapter *ad;
            us_err e = {{0}};
            CHECK(!us_adapter_open(out, &ad, &e), "after kill %d the adapter in --out is broken: %s", kills, e.msg);
            us_adapter_close(ad);
        }
    }
    CHECK(rc == 0, "the run never finished");
    CHECK(kills >= 20, "only %d kills landed", kills);
    CHECK(in_save >= 1, "no kill landed inside a checkpoint save (%d kills)", kills);
    printf("     resume_kill_trials: %d kills (%d inside a save), %d runs\n", kills, in_save, runs);
    snprintf(a, sizeof a, "%s/ref/adapter_model.safetensors", tmp);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", out);
    CHECK(cu_same_file(a, b), "final adapter differs from the uninterrupted run's");
    snprintf(a, sizeof a, "%s/ref.jsonl", tmp);
    CHECK(same_losses(a, metrics, KILL_STEPS, msg, sizeof msg), "%s", cu_tail(msg));
    CHECK(check_ckpts(out, msg, sizeof msg) == 0, "after the final run: %s", cu_tail(msg));
    CHECK(count_tmp_files(out) == 0, "temporary files left in %s after the final run", out);
}

TEST(resume_sigterm) {
    const char *tmp = us_test_tmpdir();
    char msg[OUT_CAP];
    CHECK(reference_run(tmp, STEPS, msg, sizeof msg) == 0, "%s", cu_tail(msg));
    char cmd[8192], out[600], metrics[600], log[600], a[700], b[700];
    snprintf(out, sizeof out, "%s/run", tmp);
    snprintf(metrics, sizeof metrics, "%s/run.jsonl", tmp);
    snprintf(log, sizeof log, "%s/run.log", tmp);
    train_cmd(cmd, sizeof cmd, STEPS, FIX "/model", FIX "/data.jsonl", out, metrics, "--save-every 10 --resume");
    /* slow saves keep the run going long enough for the signal to land mid-run */
    pid_t pid = spawn(cmd, log, CU_ENV "UNSWAG_TEST_SLOW_SAVE_MS=150");
    /* signal once the first step is in the metrics (the handler is installed by then) */
    for (int i = 0; i < 20000; i++) {
        size_t len = 0;
        char *mt = cu_slurp(metrics, &len);
        free(mt);
        if (len > 0) break;
        sleep_ms(1);
    }
    sleep_ms(100);
    kill(pid, SIGTERM);
    int rc = wait_rc(pid);
    char *text = cu_slurp(log, NULL);
    CHECK(text, "no log");
    CHECK(rc == 0, "SIGTERM: exit %d; log:\n%s", rc, cu_tail(text));
    CHECK(strstr(text, "stopped by a signal after step") && strstr(text, "run the same command with --resume"),
          "no resume message:\n%s", cu_tail(text));
    CHECK(!cu_sanitizer_report(text), "%s", cu_tail(text));
    free(text);
    char newest[4200];
    int step = -1;
    CHECK(us_ckpt_newest(out, newest, sizeof newest, &step), "no valid checkpoint after SIGTERM");
    CHECK(step > 0 && step < STEPS, "SIGTERM checkpoint at step %d", step);
    char o2[OUT_CAP];
    rc = cu_run(o2, sizeof o2, CU_ENV "%s", cmd);
    CHECK(rc == 0, "resume failed (%d): %s", rc, cu_tail(o2));
    snprintf(a, sizeof a, "%s/ref/adapter_model.safetensors", tmp);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", out);
    CHECK(cu_same_file(a, b), "adapter after SIGTERM + resume differs from the uninterrupted run's");
    snprintf(a, sizeof a, "%s/ref.jsonl", tmp);
    CHECK(same_losses(a, metrics, STEPS, msg, sizeof msg), "%s", cu_tail(msg));
    /* the same command again after completion changes nothing */
    rc = cu_run(o2, sizeof o2, CU_ENV "%s", cmd);
    CHECK(rc == 0 && cu_same_file(a, a), "rerun after completion: %d %s", rc, cu_tail(o2));
    snprintf(a, sizeof a, "%s/ref/adapter_model.safetensors", tmp);
    CHECK(cu_same_file(a, b), "rerun after completion changed the adapter");
}

/* Sets element `index` of F32 tensor `name` in a safetensors file to NaN, in place. */
static int poison(const char *path, const char *name, long index) {
    size_t len;
    char *b = cu_slurp(path, &len);
    if (!b || len < 8) return -1;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)b[i];
    cJSON *h = cJSON_ParseWithLength(b + 8, (size_t)hl);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(h, name);
    cJSON *o = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    int r = -1;
    if (o) {
        size_t at = 8 + (size_t)hl + (size_t)cJSON_GetArrayItem(o, 0)->valuedouble + (size_t)index * 4;
        float nan = NAN;
        if (at + 4 <= len) {
            memcpy(b + at, &nan, 4);
            r = us_test_write(path, b, len);
        }
    }
    cJSON_Delete(h);
    free(b);
    return r;
}

TEST(resume_nonfinite_stop) {
    const char *tmp = us_test_tmpdir();
    char model[600], data[600], out[600], metrics[600], cmd[8192], o[OUT_CAP];
    snprintf(model, sizeof model, "%s/model", tmp);
    snprintf(data, sizeof data, "%s/data.jsonl", tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(metrics, sizeof metrics, "%s/m.jsonl", tmp);
    /* mistral_mlp: untied embeddings, so a NaN in token 7's input row touches only rows using 7 */
    CHECK(!cu_run(o, sizeof o, "cp -r " FIXTURES "/mistral_mlp/model %s", model), "cp: %s", cu_tail(o));
    /* token 7's embedding row gets a NaN: rows 1-4 avoid it, rows 5-8 use it */
    CHECK(!poison(strcat(strcpy(cmd, model), "/model.safetensors"), "model.embed_tokens.weight", 7 * 64 + 3), "poison");
    CHECK(!cu_write(data, "{\"input_ids\": [1, 2, 3, 4, 5, 6]}\n{\"input_ids\": [8, 9, 10, 11, 12]}\n"
                          "{\"input_ids\": [13, 14, 15, 16]}\n{\"input_ids\": [17, 18, 19, 20, 21]}\n"
                          "{\"input_ids\": [1, 7, 2, 3]}\n{\"input_ids\": [7, 7, 7]}\n"
                          "{\"input_ids\": [4, 5, 7, 6]}\n{\"input_ids\": [7, 1]}\n"),
          "write data");
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s --out %s --steps 8 --batch 1 --no-shuffle --lora-r 4 --lr 1e-2 "
             "--save-every 2 --max-skips 3 --metrics %s --quiet --resume",
             cu_cli(), model, data, out, metrics);
    int rc = cu_run(o, sizeof o, CU_ENV "%s", cmd);
    CHECK(rc == 1, "expected exit 1, got %d: %s", rc, cu_tail(o));
    CHECK(!cu_sanitizer_report(o), "%s", cu_tail(o));
    CHECK(strstr(o, "3 updates in a row had a non-finite loss or gradient (steps 5-7)"), "message:\n%s", cu_tail(o));
    CHECK(strstr(o, "checkpoint-6") && strstr(o, "--resume"), "message does not name the last good checkpoint:\n%s",
          cu_tail(o));
    char newest[4200];
    int step;
    CHECK(us_ckpt_newest(out, newest, sizeof newest, &step) && step == 6, "newest valid checkpoint: step %d", step);
    char a[4400], b[700];
    snprintf(a, sizeof a, "%s/adapter_model.safetensors", newest);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", out);
    CHECK(cu_same_file(a, b), "the adapter in --out is not the last good checkpoint's");
    snprintf(a, sizeof a, "%s/checkpoint-4/adapter_model.safetensors", out);
    CHECK(cu_same_file(a, b), "skipped updates changed the parameters (checkpoint-4 vs -6)");
    /* each skipped step was reported */
    CHECK(strstr(o, "step 5: non-finite loss or gradient; update skipped"), "%s", cu_tail(o));
}

TEST(resume_refuses_foreign_checkpoints) {
    const char *tmp = us_test_tmpdir();
    char cmd[8192], o[OUT_CAP], out[600], m[600];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(m, sizeof m, "%s/m.jsonl", tmp);
    train_cmd(cmd, sizeof cmd, STEPS, FIX "/model", FIX "/data.jsonl", out, m, "--save-every 20");
    CHECK(cu_run(o, sizeof o, CU_ENV "%s", cmd) == 0, "%s", cu_tail(o));
    /* a fresh run (no --resume) into the same directory */
    int rc = cu_run(o, sizeof o, CU_ENV "%s", cmd);
    CHECK(rc == 1 && strstr(o, "already holds checkpoints") && strstr(o, "--resume"), "rc %d: %s", rc, cu_tail(o));
    /* a resume with another learning rate */
    rc = cu_run(o, sizeof o, CU_ENV "%s --resume --lr 0.5", cmd);
    CHECK(rc == 1 && strstr(o, "was written by a different run: lr = 0.01 there, 0.5 now"), "rc %d: %s", rc,
          cu_tail(o));
    CHECK(!cu_sanitizer_report(o), "%s", cu_tail(o));
}

TEST(resume_preflight_memory_and_disk) {
    const char *tmp = us_test_tmpdir();
    char cmd[8192], o[OUT_CAP], out[600], m[600];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(m, sizeof m, "%s/m.jsonl", tmp);
    train_cmd(cmd, sizeof cmd, STEPS, FIX "/model", FIX "/data.jsonl", out, m, "--save-every 5");
    int rc = cu_run(o, sizeof o, CU_ENV "UNSWAG_TEST_MEM_TOTAL_MB=1 %s", cmd);
    CHECK(rc == 1 && strstr(o, "not enough cpu memory") && strstr(o, "activations") && strstr(o, "lower --batch"),
          "rc %d: %s", rc, cu_tail(o));
    CHECK(access(out, F_OK) != 0, "a run refused by preflight created %s", out);
    /* a real machine cannot hold 2^30 tokens per step of this model: refused before allocating */
    rc = cu_run(o, sizeof o, CU_ENV "%s --batch 1048576 --seq-len 512", cmd);
    CHECK(rc == 1 && (strstr(o, "not enough cpu memory") || strstr(o, "too many")), "rc %d: %s", rc, cu_tail(o));
    CHECK(!cu_sanitizer_report(o), "%s", cu_tail(o));
    rc = cu_run(o, sizeof o, CU_ENV "UNSWAG_TEST_DISK_FREE_MB=0.01 %s", cmd);
    CHECK(rc == 1 && strstr(o, "not enough free disk space") && strstr(o, "--keep"), "rc %d: %s", rc, cu_tail(o));
    CHECK(cu_count_entries(out) == 0, "the disk preflight left files in %s", out);
    CHECK(!cu_write(m, "x"), "write");
    rc = cu_run(o, sizeof o, CU_ENV "%s --out %s/file", cmd, m);
    CHECK(rc == 1 && strstr(o, "ot a directory"), "rc %d: %s", rc, cu_tail(o));
}
