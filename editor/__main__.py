"""``python -m editor``: the same as ``npe``."""

import sys

from editor.launch import main

sys.exit(main())
