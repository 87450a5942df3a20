/* fuzz_stub.c — the fuzz targets link only the readers (core, io, data, tok), not the compute
 * backends; common.c's version string asks the backend registry for its list, answered here. */
const char *us_backends_compiled(void);
const char *us_backends_compiled(void) { return "none (fuzz build)"; }
