#!/usr/bin/env python
"""Convert an ml-cvnets MobileViT v1 checkpoint into a Hub-ready folder.

    python conversion_scripts/convert_mlcvnets_checkpoint.py --checkpoint mobilevit_s.pt --output-dir mobilevit-small

A thin command line over `mobilevit.conversion` (also available as `mobilevit convert`); run with --help for
the options.
"""

import sys
from pathlib import Path

try:
    from mobilevit.conversion import main
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mobilevit.conversion import main

if __name__ == "__main__":
    sys.exit(main())
