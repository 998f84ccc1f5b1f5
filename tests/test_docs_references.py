"""No reference in the code or the docs points at a missing file: every relative Markdown link (and its
#anchor) resolves, every repository path that the README, docs/ or a docstring names exists, and the design
sections that the code cites ("docs/design.md §N") are there."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
SOURCES = [
    p
    for folder in ('diffhand_jax', 'configs', 'datasets', 'tests', 'launch')
    for p in sorted((ROOT / folder).rglob('*'))
    if p.suffix in ('.py', '.md', '.sh', '.sbatch') and '__pycache__' not in p.parts
]
# Paths in prose: a top-level folder of the repository, then a file name with an extension.
PATH = re.compile(
    r'(?<![\w/.-])((?:diffhand_jax|configs|datasets|docs|tests|launch)/[\w./-]*\.(?:py|md|png|sh|sbatch|npz|tsv|bib))'
)
# The project's source spec lives outside the repository; users never have it, so nothing names it.
# (Spelled in pieces, so that this file does not name it either.)
OUTSIDE = ('..' + '/' + 'shared', 'DESIGN' + '.md')
LINK = re.compile(r'\]\(([^)\s]+)\)')


def _anchors(markdown: str) -> set[str]:
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
  anchors = set()
  for line in markdown.splitlines():
    match = re.match(r'#+ (.*)', line)
    if match:
      text = re.sub(r'[^\w\- ]', '', match.group(1).strip().lower())
      anchors.add(text.replace(' ', '-'))
  return anchors


def test_markdown_links_resolve():
  broken = []
  for page in DOCS:
    text = page.read_text()
    for target in LINK.findall(text):
      if re.match(r'[a-z]+:', target):
        continue  # http(s), mailto
      path, _, anchor = target.partition('#')
      resolved = (page.parent / path).resolve() if path else page
      if not resolved.exists():
        broken.append(f'{page.relative_to(ROOT)}: {target}')
      elif anchor and resolved.suffix == '.md' and anchor not in _anchors(resolved.read_text()):
        broken.append(f'{page.relative_to(ROOT)}: {target} (no such heading)')
  assert not broken, broken


def test_named_repository_paths_exist():
  missing = []
  for source in DOCS + SOURCES:
    for path in PATH.findall(source.read_text(errors='replace')):
      if not (ROOT / path).exists():
        missing.append(f'{source.relative_to(ROOT)}: {path}')
  assert not missing, missing


def test_cited_design_sections_exist():
  sections = {
      int(n) for n in re.findall(r'^## (\d+)\. ', (ROOT / 'docs' / 'design.md').read_text(), re.M)
  }
  cited = set()
  for source in DOCS + SOURCES:
    cited |= {
        int(n) for n in re.findall(r'design(?:\.md)? §(\d+)', source.read_text(errors='replace'))
    }
  assert cited and cited <= sections, sorted(cited - sections)


def test_nothing_points_outside_the_repository():
  offenders = [
      str(p.relative_to(ROOT))
      for p in DOCS + SOURCES + [ROOT / 'pyproject.toml', ROOT / '.ci' / 'run']
      if any(outside in p.read_text(errors='replace') for outside in OUTSIDE)
  ]
  assert not offenders, offenders
