"""Rewrite the README's step table from the code (cirkit.components.describe.markdown_table)."""

import re
from pathlib import Path

from cirkit.components.describe import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- step table: .*? -->\n).*?(<!-- end of step table -->)", re.S)

text = README.read_text(encoding="utf-8")
if not BLOCK.search(text):
    raise SystemExit("README.md has no step table markers")
README.write_text(BLOCK.sub(lambda m: m.group(1) + markdown_table() + m.group(2), text, count=1), encoding="utf-8")
print("README.md: step table rewritten")
