"""`python -m smiling_relay …` is the same as `smiling-relay …`."""

import sys

from smiling_relay.cli import main

if __name__ == "__main__":
    sys.exit(main())
