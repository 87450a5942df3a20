/* test_install.c — `make install` and the public API, as a user of the library would use them.
 *
 * Installs the build this test runner belongs to (build/, or build-asan/ with the sanitizer
 * flags, so nothing is recompiled differently) into a temporary prefix; the binary, static
 * library, header and pkg-config file must be there; examples/finetune.c must compile and link
 * with nothing but `pkg-config --cflags --libs unswag`, and run: it fine-tunes a fixture through
 * us_trainer_*, evaluates through us_session_* before and after (the example exits non-zero
 * unless the loss went down) and generates. DESTDIR staging puts the same files under DESTDIR. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static int exists(const char *dir, const char *rel) {
    char p[1200];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return stat(p, &sb) == 0 && sb.st_size > 0;
}

TEST(install_and_example) {
    char self[1024], cwd[1024], make_vars[2048], cmd[8192], out[16384];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0 && getcwd(cwd, sizeof cwd), "paths");
    self[n] = 0;
    *strrchr(self, '/') = 0;
    size_t lc = strlen(cwd);
    CHECK(!strncmp(self, cwd, lc) && self[lc] == '/', "the test runner %s is not under the repository %s", self, cwd);
    const char *build = self + lc + 1;
    /* the same variables the build used (nothing must recompile): the sanitizer build has its
     * own, and a build without the CUDA backend (see `unswag --version`) must stay without it */
    snprintf(cmd, sizeof cmd, "%s/unswag --version", self);
    CHECK(us_test_run(cmd, out, sizeof out) == 0, "unswag --version: %.300s", out);
    bool no_cuda = !strstr(out, "cuda");
    if (strstr(build, "asan"))
        snprintf(make_vars, sizeof make_vars,
                 "BUILD=%s OPT='-O1 -g -fno-omit-frame-pointer' "
                 "SAN='-fsanitize=address,undefined -fno-sanitize-recover=undefined' US_NO_CUDA=1",
                 build);
    else
        snprintf(make_vars, sizeof make_vars, "BUILD=%s%s", build, no_cuda ? " US_NO_CUDA=1" : "");
    const char *tmp = us_test_tmpdir();
    char prefix[700];
    snprintf(prefix, sizeof prefix, "%s/usr", tmp);
    snprintf(cmd, sizeof cmd, "make -s %s install PREFIX=%s", make_vars, prefix);
    int rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "make install failed (%d): %.1500s", rc, out);
    CHECK(exists(prefix, "bin/unswag") && exists(prefix, "lib/libunswag.a") && exists(prefix, "include/unswag.h") &&
              exists(prefix, "lib/pkgconfig/unswag.pc"),
          "installed files missing under %s", prefix);
    snprintf(cmd, sizeof cmd, "%s/bin/unswag --version", prefix);
    CHECK(us_test_run(cmd, out, sizeof out) == 0 && strstr(out, "unswag 0."), "installed CLI: %.300s", out);

    /* the example, built from the installed files only */
    snprintf(cmd, sizeof cmd,
             "PKG_CONFIG_PATH=%s/lib/pkgconfig cc -std=c11 -Wall -Wextra -Werror examples/finetune.c "
             "$(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --cflags --libs unswag) -o %s/finetune",
             prefix, prefix, tmp);
    rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "examples/finetune.c does not build against the install (%d): %.1500s", rc, out);
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=1 %s/finetune " FIXTURES "/mistral_mlp/model " FIXTURES "/mistral_mlp/data.jsonl %s/adapter 15",
             tmp, tmp);
    rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "the example failed (%d): %.1500s", rc, out);
    CHECK(strstr(out, "before") && strstr(out, "after fine-tuning") && strstr(out, "greedy continuation"),
          "example output: %.500s", out);
    char ad[800];
    snprintf(ad, sizeof ad, "%s/adapter", tmp);
    CHECK(exists(ad, "adapter_model.safetensors") && exists(ad, "adapter_config.json"), "no adapter written");

    /* DESTDIR staging */
    snprintf(cmd, sizeof cmd, "make -s %s install PREFIX=/opt/unswag DESTDIR=%s/stage", make_vars, tmp);
    rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "make install DESTDIR failed (%d): %.1500s", rc, out);
    char stage[800];
    snprintf(stage, sizeof stage, "%s/stage/opt/unswag", tmp);
    CHECK(exists(stage, "lib/libunswag.a") && exists(stage, "lib/pkgconfig/unswag.pc"), "DESTDIR layout");
    snprintf(cmd, sizeof cmd, "grep -q '^prefix=/opt/unswag$' %s/lib/pkgconfig/unswag.pc", stage);
    CHECK(us_test_run(cmd, out, sizeof out) == 0, "unswag.pc does not name the PREFIX");
}
