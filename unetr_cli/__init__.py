"""unetr: UNETR 3D CT multi-organ segmentation (BTCV) as one command-line tool."""

import time

from unetr_cli import ending  # noqa: F401 - its exit handler first, so that it runs after all the others

__version__ = "0.1.0"

STARTED_AT = time.monotonic()  # when unetr was first imported: start-up times are reported from here
