"""Flag parsing shared by the commands (predict, submission, bench and its benchmarks, profiling, ...).

Each command keeps its absl flags in a `flags.FlagValues()` of its own (not absl's global `flags.FLAGS`),
so that commands imported into one process (the tests, `bench all`) never clash over a flag name, and
parses its argv with `parse`:

  FLAGS = flags.FlagValues()
  flags.DEFINE_string('workdir', None, '...', flag_values=FLAGS)

  def main(argv=None) -> int:
    try:
      rest = command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.predict', doc=__doc__,
                                config=overrides.override_fields)
    except command_line.Exit as done:
      return done.code
    ...

`parse` answers --help (exit status 0) and turns every flag error, including an unknown
`--config.some.key`, into one message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from typing import Any, Callable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from diffhand_jax.geometry import hypotheses
from diffhand_jax.inference import pipeline, tta

HELP_FLAGS = ('-h', '--help', '--helpshort', '--helpfull', '-help')


class Exit(Exception):
  """Parsing ended the command: `code` 0 after --help, 2 after a usage error (already printed)."""

  def __init__(self, code: int):
    super().__init__(code)
    self.code = code


def define_sampling_flags(flag_values: flags.FlagValues, *, num_hypotheses: int | None) -> None:
  """The sampler's flags that the inference commands share: --num_hypotheses (default
  `num_hypotheses`; None: the run's config.model.num_hypotheses), --method, --seed and the TTA flags
  (`define_tta_flags`). `inference_options` reads them back."""
  flags.DEFINE_integer(
      'num_hypotheses',
      num_hypotheses,
      'hypotheses K per image'
      + (' (default: config.model.num_hypotheses)' if num_hypotheses is None else ''),
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      'method',
      'mean',
      hypotheses.METHODS,
      'how the K hypotheses become one mesh',
      flag_values=flag_values,
  )
  define_tta_flags(flag_values)
  flags.DEFINE_integer('seed', 0, "the sampler's random seed", flag_values=flag_values)


def define_tta_flags(flag_values: flags.FlagValues, *, switch: bool = True) -> None:
  """--tta (when `switch`), --tta_angles and --tta_scales in `flag_values`, defaulting to
  `inference.tta.TTAConfig`'s passes; `tta_config` reads them back."""
  default = tta.TTAConfig()
  if switch:
    flags.DEFINE_bool(
        'tta', False, 'test-time augmentation (rotations, scales)', flag_values=flag_values
    )
  flags.DEFINE_string(
      'tta_angles',
      ','.join(f'{angle:g}' for angle in default.angles_deg),
      'TTA rotations, degrees, comma-separated',
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      'tta_scales',
      ','.join(f'{scale:g}' for scale in default.scales),
      'TTA scales, comma-separated',
      flag_values=flag_values,
  )


def tta_config(flag_values: flags.FlagValues) -> tta.TTAConfig | None:
  """The `inference.tta.TTAConfig` of the flags `define_tta_flags` made; None when --tta is defined
  and off. Raises ValueError for a list that is not numbers."""
  if 'tta' in flag_values and not flag_values['tta'].value:
    return None
  return tta.TTAConfig(
      angles_deg=tta.parse_list(flag_values['tta_angles'].value),
      scales=tta.parse_list(flag_values['tta_scales'].value),
  )


def inference_options(
    flag_values: flags.FlagValues, base: pipeline.Options = pipeline.DEFAULTS, **fixed: Any
) -> pipeline.Options:
  """The inference core's options from a command's flags, the one way every command builds them:
  each field of `pipeline.Options` from the flag of its name where the command defines one (`tta` from
  the TTA flags), else `fixed`, else `base`'s. Raises ValueError for a TTA list that is not numbers.
  """
  values = {}
  for field in dataclasses.fields(pipeline.Options):
    if field.name == 'tta' and 'tta_angles' in flag_values:
      values['tta'] = tta_config(flag_values)
    elif field.name in flag_values:
      values[field.name] = flag_values[field.name].value
  values.update(fixed)
  return dataclasses.replace(base, **values)


def flags_help(
    flag_values: flags.FlagValues,
    config: ml_collections.ConfigDict | None = None,
    config_help: str = '',
) -> str:
  """absl's description of the command's flags, without its per-module headings; the --config flag as
  the list of the fields it may override."""
  text = flag_values.get_help(include_special_flags=False)
  lines, skipping = [], False
  for line in text.splitlines():
    if line.startswith('  --'):
      skipping = line.startswith('  --config')
    if line.startswith(' ') and not skipping:
      lines.append(line)
  if config is not None:
    lines.append(
        textwrap.fill(
            f'--config.KEY=VALUE: {config_help}' if config_help else '--config.KEY=VALUE',
            width=100,
            initial_indent='  ',
            subsequent_indent='    ',
        )
    )
    for section in config:
      fields = (
          ', '.join(config[section])
          if isinstance(config[section], ml_collections.ConfigDict)
          else ''
      )
      lines.append(
          textwrap.fill(
              f'config.{section}.{{{fields}}}' if fields else f'config.{section}',
              width=100,
              initial_indent='    ',
              subsequent_indent='      ',
          )
      )
  return '\n'.join(lines)


def _first_lines(error: BaseException, count: int = 4) -> str:
  lines = [line for line in str(error).splitlines() if line.strip()]
  return '\n'.join(lines[:count]) or type(error).__name__


def usage_error(prog: str, message: str) -> Exit:
  """Prints `message` as a usage error and returns the Exit (status 2) to raise."""
  print(f'{prog}: error: {message}\n(`{prog} --help` lists the flags)', file=sys.stderr)
  return Exit(2)


def _has_path(config: ml_collections.ConfigDict, path: str) -> bool:
  node = config
  for part in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _unknown_override(
    prog: str,
    argv: Sequence[str],
    schema: ml_collections.ConfigDict,
    error: Exception,
    config_help: str,
) -> Exit:
  """The usage error of an override that names no field: config_flags' own message (a KeyError inside
  an AttributeError, with "Did you mean" when it has a guess), and the name as given."""
  inner = error.args[0] if error.args else error
  message = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
  unknown = [
      arg.split('=', 1)[0]
      for arg in argv
      if arg.startswith('--config.')
      and not _has_path(schema, arg.split('=', 1)[0][len('--config.') :])
  ]
  name = unknown[0] if unknown else '--config.*'
  text = f'unknown flag {name}: no field {message}'
  if config_help:
    text += f'\n{config_help}'
  return usage_error(prog, text)


def _clear(flag_values: flags.FlagValues) -> None:
  """Back to the defaults, and without the --config flags of an earlier parse (they are defined anew for
  each argv: config_flags creates one flag per override that the argv names)."""
  for name in [n for n in flag_values if n == 'config' or n.startswith('config.')]:
    if name in flag_values:
      delattr(flag_values, name)
  flag_values.unparse_flags()


def parse(
    flag_values: flags.FlagValues,
    argv: Sequence[str] | None,
    *,
    prog: str,
    doc: str = '',
    config: Callable[[], ml_collections.ConfigDict] | None = None,
    config_help: str = '',
    config_file: bool = False,
    max_positional: int | None = 0,
) -> list[str]:
  """Parses `argv` (without the program name; None: sys.argv[1:]) into `flag_values`, every flag starting
  from its default. Returns the positional arguments (at most `max_positional`; None: any number).

  config: makes the ConfigDict that `--config.key=value` overrides (`config_flags.DEFINE_config_dict`;
  read it as `flag_values.config` afterwards). config_help: one line on what may be overridden, shown in
  --help and after an unknown key. config_file: --config names a config file (configs/<name>.py, its
  `get_config()`), which `--config.key=value` overrides (`config_flags.DEFINE_config_file`); a missing
  or broken file is a usage error too.

  Raises Exit(0) after printing --help, Exit(2) after printing a usage error.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  flagged = argv[: argv.index('--')] if '--' in argv else argv
  _clear(flag_values)
  schema = config() if config is not None else None
  if schema is not None:
    try:
      config_flags.DEFINE_config_dict(
          'config',
          schema,
          config_help or 'config overrides',
          flag_values=flag_values,
          sys_argv=[prog, *argv],
      )
    except AttributeError as error:  # config_flags: an override naming no field
      raise _unknown_override(prog, argv, config(), error, config_help) from None
    except flags.Error as error:
      raise usage_error(prog, str(error)) from None
  if config_file:
    try:
      config_flags.DEFINE_config_file(
          'config',
          None,
          'a training config file (configs/<name>.py); --config.key=value overrides its fields',
          flag_values=flag_values,
          lock_config=True,
          sys_argv=[prog, *argv],
      )
    except AttributeError as error:  # an override naming no field of the file's config
      inner = error.args[0] if error.args else error
      message = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
      unknown = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')]
      raise usage_error(prog, f'unknown flag among {unknown}: no field {message}') from None
    except (flags.Error, OSError) as error:
      raise usage_error(prog, _first_lines(error)) from None
  if any(arg in HELP_FLAGS for arg in flagged):
    print(doc.rstrip())
    print('\nflags:')
    print(flags_help(flag_values, schema, config_help))
    raise Exit(0)
  try:
    rest = flag_values([prog, *argv])
    if config_file and flag_values['config'].present:
      flag_values.config.keys()  # a file that failed to load raises here: report it now
  except (flags.Error, OSError) as error:
    raise usage_error(prog, _first_lines(error)) from None
  except Exception as error:  # pylint: disable=broad-except - an exception inside the config file
    raise usage_error(prog, f'the config file failed: {_first_lines(error)}') from None
  rest = rest[1:]
  if max_positional is not None and len(rest) > max_positional:
    raise usage_error(prog, f'unexpected arguments: {" ".join(rest[max_positional:])}')
  return rest
