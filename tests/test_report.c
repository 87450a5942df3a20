/* test_report.c — the HTML run report, rendered by a real browser, and the progress output.
 *
 * A report is built from curves whose shape we choose (a loss falling from 4 to 0.01, an eval
 * loss, a warmup-then-cosine learning rate, a flat tokens/s), written, then opened in headless
 * Chromium twice: --dump-dom must show one SVG chart per curve group with a polyline per series
 * carrying the number of points we gave, and a --screenshot PNG must show the curves: the pixels
 * of the first series' colour (#2563eb) must be present inside the first chart, and the page must
 * not be blank. Chromium comes from tests/report/deps.sh (run by scripts/deps.sh); without it the
 * test fails and says so. The PNG is decoded by a few lines of python3 (zlib + unfiltering).
 * The page must also be self-contained: nothing fetched from elsewhere. */
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "test.h"
#include "train/progress.h"
#include "train/report.h"

static const char *PNG_CHECK =
    "import sys, zlib, struct\n"
    "d = open(sys.argv[1], 'rb').read()\n"
    "assert d[:8] == b'\\x89PNG\\r\\n\\x1a\\n', 'not a PNG'\n"
    "i, idat, w, h = 8, b'', 0, 0\n"
    "while i < len(d):\n"
    "    n, t = struct.unpack('>I4s', d[i:i+8]); c = d[i+8:i+8+n]; i += 12 + n\n"
    "    if t == b'IHDR': w, h, bd, ct = struct.unpack('>IIBB', c[:10]); assert bd == 8 and ct in (2, 6)\n"
    "    elif t == b'IDAT': idat += c\n"
    "bpp = 4 if ct == 6 else 3; raw = zlib.decompress(idat); stride = w * bpp; rows = []; prev = bytearray(stride)\n"
    "for y in range(h):\n"
    "    f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])\n"
    "    for x in range(stride):\n"
    "        a = line[x - bpp] if x >= bpp else 0; b = prev[x]; c = prev[x - bpp] if x >= bpp else 0\n"
    "        if f == 1: line[x] = (line[x] + a) & 255\n"
    "        elif f == 2: line[x] = (line[x] + b) & 255\n"
    "        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255\n"
    "        elif f == 4:\n"
    "            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)\n"
    "            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255\n"
    "    rows.append(line); prev = line\n"
    "x0, y0, x1, y1 = [int(v) for v in sys.argv[2:6]]\n"
    "blue = nonwhite = 0\n"
    "for y in range(max(0, y0), min(h, y1)):\n"
    "    r = rows[y]\n"
    "    for x in range(max(0, x0), min(w, x1)):\n"
    "        R, G, B = r[x * bpp], r[x * bpp + 1], r[x * bpp + 2]\n"
    "        if R < 235 or G < 235 or B < 235: nonwhite += 1\n"
    "        if abs(R - 37) < 40 and abs(G - 99) < 40 and B > 190: blue += 1\n"
    "print(w, h, nonwhite, blue)\n";

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

TEST(report_renders_in_chromium) {
    const char *dir = us_test_tmpdir();
    char html[600], png[600], py[600], cmd[4096];
    snprintf(html, sizeof html, "%s/report.html", dir);
    snprintf(png, sizeof png, "%s/shot.png", dir);
    snprintf(py, sizeof py, "%s/png.py", dir);
    enum { N = 120 };
    double loss[N], lr[N], tps[N], ex[6], ey[6];
    for (int i = 0; i < N; i++) {
        loss[i] = 0.01 + 4.0 * exp(-i / 20.0) + 0.05 * ((i * 7919) % 13) / 13.0;
        lr[i] = i < 10 ? 2e-4 * i / 10 : 1e-4 * (1 + cos(M_PI * (i - 10) / (N - 10)));
        tps[i] = 5000 + (i % 5) * 40;
    }
    for (int k = 0; k < 6; k++) ex[k] = 1 + k * 20, ey[k] = 0.05 + 4.0 * exp(-ex[k] / 20.0);
    us_report *r = us_report_new("test <report> & co");
    CHECK(r, "no report");
    CHECK(!us_report_series(r, "loss", "train loss", NULL, loss, N), "series");
    CHECK(!us_report_series(r, "loss", "eval loss", ex, ey, 6), "series");
    CHECK(!us_report_series(r, "learning rate", "lr", NULL, lr, N), "series");
    CHECK(!us_report_series(r, "tokens / s", "tokens/s", NULL, tps, N), "series");
    us_report_param(r, "run", "lora", "r %d alpha %d", 16, 32);
    us_report_note(r, "notes", "a <b>not bold</b> note");
    us_err e = {{0}};
    CHECK(!us_report_write(r, html, &e), "%s", e.msg);
    us_report_free(r);

    char *text;
    size_t len;
    CHECK(!us_read_file(html, &text, &len, &e), "%s", e.msg);
    int external = count(text, "src=") + count(text, "href=") + count(text, "@import") + count(text, "<script");
    bool escaped = strstr(text, "&lt;b&gt;not bold") && strstr(text, "test &lt;report&gt; &amp; co");
    free(text);
    CHECK(external == 0, "the page references %d external resources", external);
    CHECK(escaped, "text is not HTML-escaped");

    /* the DOM as Chromium built it */
    static char out[1 << 20];
    snprintf(cmd, sizeof cmd,
             "command -v chromium >/dev/null || { echo 'chromium missing: run scripts/deps.sh (tests/report/deps.sh)'; exit 3; }; "
             "chromium --headless --no-sandbox --disable-gpu --dump-dom 'file://%s' 2>/dev/null",
             html);
    int rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "chromium --dump-dom failed (%d): %.300s", rc, out);
    CHECK(count(out, "class=\"chart\"") == 3, "%d charts in the DOM, want 3", count(out, "class=\"chart\""));
    CHECK(count(out, "class=\"series\"") == 4, "%d series in the DOM, want 4", count(out, "class=\"series\""));
    CHECK(strstr(out, "data-name=\"train loss\" data-points=\"120\"") && strstr(out, "data-name=\"eval loss\" data-points=\"6\""),
          "series point counts differ from the input");
    CHECK(strstr(out, "r 16 alpha 32"), "configuration table missing");

    /* pixels: the first chart occupies the top-left of the grid at this window size */
    snprintf(cmd, sizeof cmd,
             "chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,900 "
             "--screenshot='%s' 'file://%s' >/dev/null 2>&1 && test -s '%s'",
             png, html, png);
    rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "chromium --screenshot failed (%d): %.300s", rc, out);
    CHECK(!us_test_write(py, PNG_CHECK, strlen(PNG_CHECK)), "write %s", py);
    /* whole page, then the region of the first chart (left half, below the note) */
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s' 0 0 100000 100000 && python3 '%s' '%s' 17 280 632 540", py, png, py,
             png);
    rc = us_test_run(cmd, out, sizeof out);
    if (getenv("US_KEEP_SHOT")) { /* to look at it: US_KEEP_SHOT=/tmp/shot.png */
        char cp[1400];
        snprintf(cp, sizeof cp, "cp '%s' \"$US_KEEP_SHOT\"", png);
        us_test_run(cp, NULL, 0);
    }
    CHECK(rc == 0, "PNG check failed (%d): %.500s", rc, out);
    long w, h, nonwhite, blue, w2, h2, nonwhite2, blue2;
    CHECK(sscanf(out, "%ld %ld %ld %ld %ld %ld %ld %ld", &w, &h, &nonwhite, &blue, &w2, &h2, &nonwhite2, &blue2) == 8,
          "PNG check output: %.300s", out);
    CHECK(w == 1280 && h == 900, "screenshot is %ldx%ld", w, h);
    CHECK(nonwhite > w * h / 100, "the page looks blank: %ld non-white pixels", nonwhite);
    CHECK(blue2 > 150, "first chart shows only %ld pixels of the train-loss colour (non-white %ld)", blue2, nonwhite2);
}

TEST(report_progress_modes) {
    char path[600];
    snprintf(path, sizeof path, "%s/progress.txt", us_test_tmpdir());
    /* plain mode: 100 steps -> a line every 5 steps, one per line, no carriage returns */
    FILE *f = fopen(path, "w+");
    CHECK(f, "open");
    us_progress p;
    us_progress_init(&p, f, 100, false, 0);
    for (int s = 1; s <= 100; s++) us_progress_step(&p, s, 1.0 / s, 1e-4, 1000, 1 << 20);
    us_progress_end(&p);
    rewind(f);
    char buf[1 << 14];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    CHECK(!strchr(buf, '\r'), "plain mode wrote a carriage return");
    int lines = count(buf, "\n");
    CHECK(lines == 21, "plain mode wrote %d lines, want 21 (step 1 and every 5th)", lines);
    CHECK(strstr(buf, "step 100/100") && strstr(buf, "mem 1.0 MiB") && strstr(buf, "eta"), "fields missing: %.200s",
          buf);
    /* terminal mode: \r-rewritten line, ending in exactly one newline, the last step shown */
    f = fopen(path, "w+");
    CHECK(f, "open");
    us_progress_init(&p, f, 50, false, 1);
    for (int s = 1; s <= 50; s++) us_progress_step(&p, s, 2.0, 1e-4, 1000, 0);
    us_progress_note(&p, "a note");
    us_progress_end(&p);
    rewind(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    CHECK(strchr(buf, '\r') && strstr(buf, "\033[K"), "terminal mode does not rewrite the line");
    CHECK(strstr(buf, "step 50/50 100%"), "last step not shown: %.300s", buf);
    CHECK(count(buf, "\n") == 2 && strstr(buf, "\na note\n"), "newlines: %d", count(buf, "\n"));
    /* quiet prints nothing */
    f = fopen(path, "w+");
    us_progress_init(&p, f, 10, true, 0);
    for (int s = 1; s <= 10; s++) us_progress_step(&p, s, 1, 1, 1, 0);
    us_progress_end(&p);
    CHECK(ftell(f) == 0, "quiet wrote %ld bytes", ftell(f));
    fclose(f);
}
