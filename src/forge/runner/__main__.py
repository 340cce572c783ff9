"""`python -m forge.runner`: start the runner (see `forge.runner.server.main`)."""

import sys

from forge.runner.server import main

if __name__ == "__main__":
    sys.exit(main())
