"""A module that calls sys.exit(0) while being imported: validate must still fail, not exit 0."""

import sys

sys.exit(0)
