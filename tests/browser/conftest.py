"""The browser test's helper (browser.py: headless Chromium over the DevTools pipe) is a plain module
beside it; the cluster test uses it too."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
