"""Prints the README's fenced code block that follows the line `<!-- ci:NAME -->`, so that CI runs the
README's own commands and the two can never drift apart.   python .ci/readme_block.py demo|test"""
import sys
from pathlib import Path

name = sys.argv[1]
lines = Path(__file__).resolve().parents[1].joinpath("README.md").read_text().splitlines()
marker = f"<!-- ci:{name} -->"
if marker not in lines:
    sys.exit(f"readme_block: README.md has no {marker}")
i = lines.index(marker) + 1
while not lines[i].startswith("```"):
    i += 1
end = lines.index("```", i + 1)
print("\n".join(lines[i + 1:end]))
