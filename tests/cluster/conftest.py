"""The cluster test's helpers are plain modules: daemons.py beside it, browser.py in tests/browser/
(shared with the browser test)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "browser"))
