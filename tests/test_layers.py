"""The package's layers (docs/design.md §10): each folder imports only the layers its row allows, and no
module imports another in a cycle. Imports are read from the source (every `import` statement, also
those inside functions), so nothing is executed."""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'diffhand_jax'

# layer -> the layers it may import (itself included).
ALLOWED = {
    'diffusion': {'diffusion'},
    'geometry': {'geometry'},
    'models': {'diffusion', 'geometry', 'models'},
    'data': {'geometry', 'data'},
    'runs': {'diffusion', 'geometry', 'models', 'data', 'runs'},
    'training': {'diffusion', 'geometry', 'models', 'data', 'runs', 'training'},
    'inference': {'diffusion', 'geometry', 'models', 'data', 'runs', 'inference'},
    'entry': {'diffusion', 'geometry', 'models', 'data', 'runs', 'training', 'inference', 'entry'},
}
FOLDER_LAYERS = ('geometry', 'models', 'data', 'runs', 'training', 'inference')


def layer_of(module: str) -> str:
  """The layer of a module of the package ('diffhand_jax.geometry.render' → 'geometry')."""
  parts = module.split('.')
  assert parts[0] == 'diffhand_jax', module
  if len(parts) == 1:
    return 'entry'  # the package's __init__
  if parts[1] == 'diffusion':
    return 'diffusion'
  if parts[1] in ('mano', 'metrics'):
    return 'geometry'  # the geometry layer's public faces
  if parts[1] in FOLDER_LAYERS:
    return parts[1]
  return 'entry'  # main, predict, bench, ..., benchmarks/


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def all_modules() -> dict[str, pathlib.Path]:
  return {module_name(path): path for path in PACKAGE.rglob('*.py')}


def imported_modules(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The project modules that ``path`` imports ('from diffhand_jax.geometry import render' gives
  diffhand_jax.geometry.render; a name that is not a module gives its package)."""
  tree = ast.parse(path.read_text(), str(path))
  package = (
      module_name(path) if path.name == '__init__.py' else module_name(path).rpartition('.')[0]
  )
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(
            package.split('.')[: len(package.split('.')) - node.level + 1]
            + ([base] if base else [])
        )
      names = [
          f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
          for alias in node.names
      ]
    else:
      continue
    for name in names:
      while name and name not in modules and '.' in name:
        name = name.rpartition('.')[0]
      if name in modules and name.startswith('diffhand_jax'):
        found.add(name)
  found.discard(module_name(path))
  return found


def import_graph() -> dict[str, set[str]]:
  modules = all_modules()
  return {name: imported_modules(path, modules) for name, path in modules.items()}


def test_every_import_is_allowed_by_the_layer_table():
  bad = []
  for module, imports in sorted(import_graph().items()):
    for target in sorted(imports):
      if target == 'diffhand_jax':
        continue  # the package itself, empty
      if layer_of(target) not in ALLOWED[layer_of(module)]:
        bad.append(f'{module} ({layer_of(module)}) imports {target} ({layer_of(target)})')
  assert not bad, 'imports the layer table forbids:\n  ' + '\n  '.join(bad)


def test_no_import_cycles():
  graph = import_graph()
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        cycles.append(stack[stack.index(target) :] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, 'import cycles:\n  ' + '\n  '.join(' -> '.join(c) for c in cycles)


# The inference layer's command modules: each reads its inputs, calls the inference core (pipeline.py,
# video.py, sampling.py, ...) and writes its outputs. None imports another, and the core imports none.
INFERENCE_COMMANDS = ('predict', 'submission', 'app')
# The longest function the inference layer keeps, in lines.
INFERENCE_MAX_FUNCTION_LINES = 80


def test_no_inference_module_imports_a_command_module():
  commands = {f'diffhand_jax.inference.{name}' for name in INFERENCE_COMMANDS}
  bad = [
      f'{module} imports {target}'
      for module, imports in sorted(import_graph().items())
      if module.startswith('diffhand_jax.inference')
      for target in sorted(imports & commands)
  ]
  assert not bad, 'inference modules importing a command module:\n  ' + '\n  '.join(bad)


def test_every_inference_command_module_exists():
  """The rule above names real modules (a renamed command would make it vacuous)."""
  for name in INFERENCE_COMMANDS:
    assert (PACKAGE / 'inference' / f'{name}.py').is_file(), name


def test_inference_functions_stay_short():
  long = []
  for path in sorted((PACKAGE / 'inference').glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > INFERENCE_MAX_FUNCTION_LINES:
          long.append(f'{path.name}:{node.lineno} {node.name} ({length} lines)')
  assert not long, f'inference functions over {INFERENCE_MAX_FUNCTION_LINES} lines: {long}'


def top_level_modules() -> set[str]:
  """The package's modules that are files directly in diffhand_jax/ (mano, metrics, main, ...)."""
  return {
      name
      for name, path in all_modules().items()
      if path.parent == PACKAGE and path.name != '__init__.py'
  }


def test_geometry_imports_no_top_level_module():
  """geometry/ is a folder that stands alone: mano.py and metrics.py are its public faces and import
  from it, never the other way round (nor any other top-level module)."""
  top = top_level_modules()
  bad = [
      f'{module} imports {target}'
      for module, imports in sorted(import_graph().items())
      if module.startswith('diffhand_jax.geometry')
      for target in sorted(imports & top)
  ]
  assert not bad, 'geometry modules that import a top-level module:\n  ' + '\n  '.join(bad)


@pytest.mark.parametrize('top', ['datasets', 'configs'])
def test_nothing_imports_the_repository_folders_as_packages(top):
  """datasets/ and configs/ hold files that `tfds build` and `--config=` name; importing them as
  packages from the repository root would shadow (for `datasets`) Hugging Face's library."""
  offenders = []
  for path in sorted(ROOT.rglob('*.py')):
    if any(
        part.startswith('.') or part in ('build', 'venv') for part in path.relative_to(ROOT).parts
    ):
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module or '']
      if any(name == top or name.startswith(top + '.') for name in names):
        offenders.append(f'{path.relative_to(ROOT)}:{node.lineno}')
  assert not offenders, f'imports of the top-level {top!r} package: {offenders}'


def _fake_package(tmp_path, monkeypatch, modules: dict[str, str]) -> None:
  """Points the checkers at a package of `modules` {'geometry/shapes.py': source} under tmp_path (each
  folder gets an empty __init__.py)."""
  fake = tmp_path / 'diffhand_jax'
  for name, source in modules.items():
    path = fake / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
  for folder in {fake} | {(fake / name).parent for name in modules}:
    if not (folder / '__init__.py').exists():
      (folder / '__init__.py').write_text('')
  monkeypatch.setattr(__import__(__name__), 'ROOT', tmp_path)
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', fake)


def test_the_layer_checker_catches_a_forbidden_import(tmp_path, monkeypatch):
  """The checker itself: a geometry module that imports training is reported."""
  _fake_package(
      tmp_path,
      monkeypatch,
      {
          'training/loop.py': 'from diffhand_jax.geometry import shapes\n',
          'geometry/shapes.py': 'from diffhand_jax.training import loop\n',
      },
  )
  with pytest.raises(
      AssertionError, match=r'geometry\.shapes \(geometry\) imports diffhand_jax\.training\.loop'
  ):
    test_every_import_is_allowed_by_the_layer_table()
  with pytest.raises(AssertionError, match='import cycles'):
    test_no_import_cycles()


def test_the_checker_catches_an_inference_module_importing_a_command(tmp_path, monkeypatch):
  _fake_package(
      tmp_path,
      monkeypatch,
      {
          'inference/app.py': 'x = 1\n',
          'inference/pipeline.py': 'from diffhand_jax.inference import app\n',
      },
  )
  with pytest.raises(
      AssertionError, match=r'inference\.pipeline imports diffhand_jax\.inference\.app'
  ):
    test_no_inference_module_imports_a_command_module()


def test_the_geometry_rule_catches_an_import_of_a_top_level_module(tmp_path, monkeypatch):
  """The layer table allows geometry -> metrics (both geometry); the geometry rule reports it."""
  _fake_package(
      tmp_path,
      monkeypatch,
      {'metrics.py': '', 'geometry/hull.py': 'from diffhand_jax import metrics\n'},
  )
  test_every_import_is_allowed_by_the_layer_table()
  with pytest.raises(
      AssertionError, match=r'diffhand_jax\.geometry\.hull imports diffhand_jax\.metrics'
  ):
    test_geometry_imports_no_top_level_module()


def test_every_module_is_in_a_layer():
  assert {layer_of(name) for name in all_modules()} == set(ALLOWED)
  assert os.path.isfile(PACKAGE / 'diffusion.py')
