# demo.mk — `make demo`, the README's main command (included by the Makefile).
#
# Builds the CLI, then runs `unswag demo`: a tiny Llama-architecture model pretrained from
# scratch on a synthetic token language and LoRA-fine-tuned on a task it has never seen, all
# in-process with nothing downloaded (src/cli/cmd_demo.c). Output lands in $(BUILD)/demo.
# DEMO_FLAGS passes options through, e.g. `make demo DEMO_FLAGS="--device cpu --quick"`.

DEMO_FLAGS ?=

demo:
	bash scripts/deps.sh --core
	$(MAKE) $(BUILD)/unswag
	$(BUILD)/unswag demo --out $(BUILD)/demo $(DEMO_FLAGS)

# --config FILE.yaml (src/cli/config_file.c) parses YAML with libyaml (Debian libyaml-dev, listed
# in scripts/deps.sh). Appended here so the Makefile itself stays untouched; LDLIBS is expanded
# when the link runs, after this file is read.
LDLIBS += $(shell pkg-config --libs yaml-0.1 2>/dev/null || echo -lyaml)

# `make install` (PREFIX, DESTDIR): the CLI, the static library, the public header and a
# pkg-config file whose Libs carry everything the static library needs (BLAS, cJSON, PCRE2,
# libyaml, OpenMP and, when built in, CUDA), so `cc prog.c $(pkg-config --cflags --libs unswag)`
# links. examples/finetune.c is built that way by tests/test_install.c.
PREFIX ?= /usr/local

.PHONY: install
install: $(BUILD)/unswag $(LIB)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/unswag $(DESTDIR)$(PREFIX)/bin/unswag
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libunswag.a
	install -m 644 include/unswag.h $(DESTDIR)$(PREFIX)/include/unswag.h
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' '' \
	    'Name: unswag' 'Description: memory-efficient LoRA fine-tuning of Hugging Face LLMs' \
	    'Version: $(shell sed -n 's/^#define UNSWAG_VERSION "\(.*\)"/\1/p' include/unswag.h)' \
	    'Cflags: -I$${includedir}' 'Libs: -L$${libdir} -lunswag $(strip $(LDFLAGS) $(LDLIBS))' \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/unswag.pc
