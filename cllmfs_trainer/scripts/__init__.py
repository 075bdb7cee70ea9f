"""The scripts behind `recipes/train.py` and `recipes/benchmark.py` (importable: `make_parser()`, `main()`, `cli()`)."""

import logging

# bitsandbytes warns at import time, on CPUs with AVX512-BF16, that an optional package for a faster 4-bit kernel is
# missing. It does so whether or not 4-bit loading is used, and it would otherwise precede every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
