#!/usr/bin/env python
"""Convert an ml-cvnets MobileViT v1 checkpoint into a Hub-ready folder.

    python conversion_scripts/convert_mlcvnets_checkpoint.py --checkpoint mobilevit_s.pt --output-dir mobilevit-small

A thin command line over `mobilevit.conversion` (the same as `mobilevit convert`); --help lists the options.
"""

import sys
from pathlib import Path

# Run from a source checkout: use the package next to this script, installed or not.
CHECKOUT = Path(__file__).resolve().parent.parent
if (CHECKOUT / "mobilevit" / "conversion.py").is_file():
    sys.path.insert(0, str(CHECKOUT))

from mobilevit.conversion import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
