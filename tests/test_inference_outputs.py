"""What the inference commands write is byte-identical to the recorded outputs (tests/golden/): photos
and crops through `predict`, `--video`, the FreiHAND, HO-3D and DexYCB submissions, and the files the
app serves. tests/_inference_outputs.py runs them and says how to record the digests again."""

import json

import pytest

import _inference_outputs


@pytest.fixture(scope='module')
def produced(tmp_path_factory):
  pytest.importorskip('av')
  pytest.importorskip('tensorflow_datasets')
  workdir, data_dir, dexycb_dir = _inference_outputs._fixture_runs()  # pylint: disable=protected-access
  golden = json.loads(_inference_outputs.GOLDEN.read_text())
  here = _inference_outputs.environment(workdir)
  if here != golden['environment']:
    changed = {
        k: (golden['environment'].get(k), v)
        for k, v in here.items()
        if golden['environment'].get(k) != v
    }
    pytest.skip(
        f'the recorded digests are of another environment ({changed}); record them here with '
        '`python tests/_inference_outputs.py --record` on the code they should hold for'
    )
  scratch = tmp_path_factory.mktemp('inference_outputs')
  return golden['outputs'], _inference_outputs.produce(workdir, data_dir, dexycb_dir, str(scratch))


def test_every_command_writes_what_it_wrote_before(produced):
  golden, digests = produced
  assert sorted(digests) == sorted(golden), 'the commands write other files than recorded'
  changed = sorted(name for name in golden if digests[name] != golden[name])
  assert not changed, f'outputs whose bytes changed: {changed}'
  # The set covers every command: photos, crops, video, the three benchmarks and the app.
  prefixes = {name.split('/')[0].split('_')[0] for name in golden}
  assert prefixes == {'predict', 'submission', 'app'}
  assert any(name.endswith('.mp4') for name in golden) and any(
      name.endswith('.npz') for name in golden
  )
