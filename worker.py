#!/usr/bin/env python3
"""Entry point of the Essay Lifecycle Service worker; the code lives in els_worker/
(its package docstring maps the modules). ``python worker.py --help`` lists the
commands, the environment variables and the error table."""

import sys

from els_worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
