"""Tests for diffhand_jax.mano: smplx equivalence, safe loading, joints, poses."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from diffhand_jax import mano
from diffhand_jax.data import fixtures

MIRROR = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope='module')
def right() -> mano.ManoModel:
  return mano.load_procedural('right')


def perturbed_arrays(model: mano.ManoModel, seed: int) -> dict[str, np.ndarray]:
  """A random MANO-format model: every array that the layer uses is perturbed."""
  rng = np.random.default_rng(seed)
  arrays = mano.model_to_arrays(model)
  arrays['v_template'] = arrays['v_template'] + rng.normal(0, 0.003, arrays['v_template'].shape)
  arrays['shapedirs'] = arrays['shapedirs'] + rng.normal(0, 0.002, arrays['shapedirs'].shape)
  arrays['posedirs'] = rng.normal(0, 0.002, arrays['posedirs'].shape)
  regressor = rng.uniform(0, 1, arrays['J_regressor'].shape) * (
      rng.uniform(size=arrays['J_regressor'].shape) < 0.02
  )
  regressor += arrays['J_regressor']
  arrays['J_regressor'] = regressor / regressor.sum(axis=1, keepdims=True)
  weights = arrays['weights'] + rng.uniform(0, 0.3, arrays['weights'].shape) * (
      rng.uniform(size=arrays['weights'].shape) < 0.2
  )
  arrays['weights'] = weights / weights.sum(axis=1, keepdims=True)
  arrays['hands_components'] = np.linalg.qr(rng.normal(size=(45, 45)))[0].T
  arrays['hands_mean'] = rng.normal(0, 0.3, 45)
  return {key: np.asarray(value) for key, value in arrays.items()}


def write_plain_pickle(path, arrays) -> str:
  with open(path, 'wb') as handle:
    pickle.dump({key: np.asarray(arrays[key]) for key in mano.FILE_KEYS}, handle)
  return str(path)


# ----------------------------------------------------------------------------------------------
# Equivalence with smplx's MANO layer
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def model_files(tmp_path_factory, right):
  folder = tmp_path_factory.mktemp('mano_files')
  perturbed = perturbed_arrays(right, seed=1)
  perturbed_model = mano.model_from_arrays(perturbed)
  files = {
      'procedural-right': (
          write_plain_pickle(folder / 'proc_MANO_RIGHT.pkl', mano.model_to_arrays(right)),
          True,
      ),
      'perturbed-right': (write_plain_pickle(folder / 'pert_MANO_RIGHT.pkl', perturbed), True),
      'perturbed-left': (
          write_plain_pickle(
              folder / 'pert_MANO_LEFT.pkl',
              mano.model_to_arrays(mano.mirror_model(perturbed_model)),
          ),
          False,
      ),
  }
  return files


@pytest.mark.parametrize('which', ['procedural-right', 'perturbed-right', 'perturbed-left'])
@pytest.mark.parametrize('use_pca', [False, True])
@pytest.mark.parametrize('flat_hand_mean', [False, True])
def test_forward_matches_smplx(model_files, which, use_pca, flat_hand_mean):
  torch = pytest.importorskip('torch')
  smplx = pytest.importorskip('smplx')
  path, is_right = model_files[which]
  ncomps = 12 if use_pca else 45
  layer = smplx.MANO(
      path,
      is_rhand=is_right,
      use_pca=use_pca,
      num_pca_comps=ncomps,
      flat_hand_mean=flat_hand_mean,
      dtype=torch.float64,
      batch_size=3,
  )
  rng = np.random.default_rng(hash((which, use_pca, flat_hand_mean)) % 2**32)
  pose = rng.normal(0.0, 0.7, (3, 3 + ncomps))
  betas = rng.normal(0.0, 1.0, (3, 10))
  with torch.no_grad():
    out = layer(
        betas=torch.tensor(betas),
        global_orient=torch.tensor(pose[:, :3]),
        hand_pose=torch.tensor(pose[:, 3:]),
    )
  ours = mano.load(path, side='right' if is_right else 'left')
  vertices, joints = mano.forward(
      ours,
      pose,
      betas,
      flat_hand_mean=flat_hand_mean,
      use_pca=use_pca,
      num_pca_comps=ncomps if use_pca else None,
  )
  assert vertices.shape == (3, 778, 3) and joints.shape == (3, 16, 3)
  np.testing.assert_allclose(np.asarray(vertices), out.vertices.numpy(), atol=1e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(joints), out.joints.numpy()[:, :16], atol=1e-6, rtol=0)


def test_rest_pose_is_template(right):
  vertices, joints = mano.forward(right, np.zeros((1, 48)), np.zeros((1, 10)), flat_hand_mean=True)
  np.testing.assert_allclose(vertices[0], right.v_template, atol=1e-7)
  np.testing.assert_allclose(joints[0], right.J_regressor @ right.v_template, atol=1e-7)


def test_global_rotation_rotates_about_the_wrist(right):
  # Hand-worked: a global rotation of 90 degrees about z maps (x, y, z) -> (-y, x, z) about joint 0.
  pose = np.zeros((1, 48))
  pose[0, 2] = np.pi / 2
  vertices, joints = mano.forward(right, pose, flat_hand_mean=True)
  wrist = np.asarray(right.J_regressor @ right.v_template)[0]
  rest = np.asarray(right.v_template) - wrist
  expected = np.stack([-rest[:, 1], rest[:, 0], rest[:, 2]], axis=1) + wrist
  np.testing.assert_allclose(vertices[0], expected, atol=1e-6)
  np.testing.assert_allclose(joints[0, 0], wrist, atol=1e-7)


def test_translation_and_unbatched_input(right):
  pose = mano.named_pose(right, 'fist')
  batched, batched_joints = mano.forward(
      right, pose[None], np.zeros((1, 10)), trans=np.array([[0.1, 0.2, 0.3]])
  )
  single, single_joints = mano.forward(right, pose, np.zeros(10))
  np.testing.assert_allclose(
      batched[0] - single, np.broadcast_to([0.1, 0.2, 0.3], single.shape), atol=1e-6
  )
  np.testing.assert_allclose(
      batched_joints[0] - single_joints, np.broadcast_to([0.1, 0.2, 0.3], (16, 3)), atol=1e-6
  )


def test_jit_and_vmap_agree_with_eager(right):
  rng = np.random.default_rng(3)
  pose = jnp.asarray(rng.normal(0, 0.5, (4, 48)), jnp.float32)
  betas = jnp.asarray(rng.normal(0, 1, (4, 10)), jnp.float32)
  eager = mano.forward(right, pose, betas)
  jitted = jax.jit(mano.forward)(right, pose, betas)
  mapped = jax.vmap(lambda p, b: mano.forward(right, p, b))(pose, betas)
  for a, b, c in zip(eager, jitted, mapped):
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_gradient_is_finite_at_zero_pose(right):
  grad = jax.grad(lambda p: jnp.sum(mano.forward(right, p, flat_hand_mean=True)[0] ** 2))(
      jnp.zeros((1, 48))
  )
  assert np.all(np.isfinite(np.asarray(grad)))


def test_pca_with_45_components_is_a_basis_change(right):
  # manopth semantics: use_pca with all 45 components still projects through hands_components.
  rng = np.random.default_rng(4)
  coefficients = rng.normal(0, 0.5, (2, 48))
  axis_angle = coefficients.copy()
  axis_angle[:, 3:] = coefficients[:, 3:] @ np.asarray(right.hands_components, np.float64)
  with_pca = mano.forward(right, coefficients, use_pca=True)
  without = mano.forward(right, axis_angle, use_pca=False)
  np.testing.assert_allclose(with_pca[0], without[0], atol=2e-6)


def test_left_is_the_mirror_of_right(right):
  # Mirroring (x -> -x) a right hand in pose theta gives the left hand in pose theta * (1, -1, -1).
  perturbed = mano.model_from_arrays(perturbed_arrays(right, seed=7))  # random posedirs too
  left = mano.mirror_model(perturbed)
  rng = np.random.default_rng(5)
  pose = rng.normal(0, 0.6, (2, 48))
  betas = rng.normal(0, 1, (2, 10))
  right_vertices, right_joints = mano.forward(perturbed, pose, betas)
  left_vertices, left_joints = mano.forward(left, pose * np.tile([1.0, -1.0, -1.0], 16), betas)
  np.testing.assert_allclose(left_vertices, np.asarray(right_vertices) * MIRROR, atol=2e-6)
  np.testing.assert_allclose(left_joints, np.asarray(right_joints) * MIRROR, atol=2e-6)
  assert left.side == 'left'


# ----------------------------------------------------------------------------------------------
# 21 joints and the regressor W
# ----------------------------------------------------------------------------------------------


def test_joints21_order():
  joints16 = np.arange(16 * 3, dtype=np.float32).reshape(1, 16, 3)
  vertices = np.zeros((1, 778, 3), np.float32)
  tips = mano.TIP_IDS['freihand']
  for k, vertex in enumerate(tips):
    vertices[0, vertex] = 1000 + k  # thumb, index, middle, ring, little
  out = np.asarray(mano.joints21(vertices, joints16, tips))[0]
  # Written out from docs/design.md §2: wrist; thumb = MANO 13, 14, 15, tip; index = 1, 2, 3, tip; middle =
  # 4, 5, 6, tip; ring = 10, 11, 12, tip; little = 7, 8, 9, tip.
  names = [
      ('j', 0),
      ('j', 13),
      ('j', 14),
      ('j', 15),
      ('t', 0),
      ('j', 1),
      ('j', 2),
      ('j', 3),
      ('t', 1),
      ('j', 4),
      ('j', 5),
      ('j', 6),
      ('t', 2),
      ('j', 10),
      ('j', 11),
      ('j', 12),
      ('t', 3),
      ('j', 7),
      ('j', 8),
      ('j', 9),
      ('t', 4),
  ]
  for position, (kind, index) in enumerate(names):
    expected = joints16[0, index] if kind == 'j' else np.full(3, 1000 + index)
    np.testing.assert_array_equal(out[position], expected)
  np.testing.assert_array_equal(mano.joints21(vertices[0], joints16[0], 'freihand'), out)


def test_joint_regressor21_identity(right):
  rng = np.random.default_rng(6)
  pose = mano.sample_random_pose(rng, right, 3)
  vertices, joints = mano.forward(right, pose, rng.normal(0, 1, (3, 10)), flat_hand_mean=True)
  for tips in ('freihand', 'dexycb', 'ho3d'):
    regressor = mano.joint_regressor21(right, mano.TIP_IDS[tips])
    assert regressor.shape == (21, 778)
    np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-5)
    regressed = np.einsum('jv,bvc->bjc', regressor, np.asarray(vertices))
    reference = mano.joints21(vertices, mano.regress_joints16(right, vertices), mano.TIP_IDS[tips])
    np.testing.assert_allclose(regressed, reference, atol=1e-6)
  # At rest, the regressed joints are the skeleton's joints.
  rest_vertices, rest_joints = mano.forward(right, np.zeros((1, 48)), flat_hand_mean=True)
  regressor = mano.joint_regressor21(right)
  np.testing.assert_allclose(
      regressor @ np.asarray(rest_vertices[0]),
      mano.joints21(rest_vertices, rest_joints, right.tip_ids)[0],
      atol=1e-6,
  )


# ----------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------


class _WritesMarker:

  def __init__(self, marker: str) -> None:
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


class _RunsSubprocess:

  def __init__(self, marker: str) -> None:
    self.marker = marker

  def __reduce__(self):
    return (subprocess.call, (['touch', self.marker],))


class _Evals:

  def __init__(self, marker: str) -> None:
    self.marker = marker

  def __reduce__(self):
    return (eval, (f"open({self.marker!r}, 'w').write('x')",))


@pytest.mark.parametrize('payload', [_WritesMarker, _RunsSubprocess, _Evals])
def test_malicious_pickle_is_refused(tmp_path, right, payload):
  marker = tmp_path / 'pwned'
  arrays = mano.model_to_arrays(right)
  arrays['hands_mean'] = payload(str(marker))  # hidden among genuine arrays
  path = tmp_path / 'MANO_RIGHT.pkl'
  with open(path, 'wb') as handle:
    pickle.dump(arrays, handle, protocol=2)
  # Sanity check that the payload is live: a plain pickle.load would run it (in a child process).
  with pytest.raises(mano.ManoFileError) as error:
    mano.load(path)
  message = str(error.value)
  assert str(path) in message and 'refused' in message
  assert not marker.exists()
  subprocess.run(
      [sys.executable, '-c', f'import pickle; pickle.load(open({str(path)!r}, "rb"))'],
      capture_output=True,
      check=False,
  )
  assert marker.exists(), 'the payload should work when unpickled without restrictions'


def _py2_pickle(obj) -> bytes:
  """A protocol-2 pickle whose str and bytes are Python-2 strings (BINSTRING), like MANO's files."""

  # The pure-Python pickler lets us emit py2 string opcodes; a fresh copy of it, without what
  # `import dill` adds to the shared one.
  clean = fixtures.pristine_pickle_module()

  class Py2Pickler(clean._Pickler):
    dispatch = dict(clean._Pickler.dispatch)

    def save_py2_string(self, value):
      data = value.encode('latin1') if isinstance(value, str) else bytes(value)
      if len(data) < 256:
        self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
      else:
        self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
      self.memoize(value)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

  buffer = io.BytesIO()
  Py2Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


@pytest.fixture()
def fake_chumpy(monkeypatch):
  """A stand-in 'chumpy.ch' module whose Ch objects pickle their array as state['x'], like chumpy."""
  package = types.ModuleType('chumpy')
  module = types.ModuleType('chumpy.ch')

  class Ch:

    def __init__(self, x):
      self.x = np.asarray(x)
      self._dirty_vars = set()
      self.label = 'terminal'

    def __getstate__(self):
      return dict(self.__dict__)

  Ch.__module__ = 'chumpy.ch'
  Ch.__qualname__ = 'Ch'
  module.Ch = Ch
  package.ch = module
  monkeypatch.setitem(sys.modules, 'chumpy', package)
  monkeypatch.setitem(sys.modules, 'chumpy.ch', module)
  return Ch


def test_official_format_imitation_loads(tmp_path, right, fake_chumpy):
  arrays = perturbed_arrays(right, seed=2)
  official = {
      'v_template': fake_chumpy(arrays['v_template'].astype(np.float64)),
      'shapedirs': fake_chumpy(arrays['shapedirs'].astype(np.float64)),
      'posedirs': fake_chumpy(arrays['posedirs'].astype(np.float64)),
      'weights': fake_chumpy(arrays['weights'].astype(np.float64)),
      'J_regressor': scipy.sparse.csc_matrix(
          arrays['J_regressor'] * (arrays['J_regressor'] > 1e-3)
      ),
      'kintree_table': arrays['kintree_table'],
      'f': arrays['f'].astype(np.uint32),
      'hands_components': arrays['hands_components'],
      'hands_mean': arrays['hands_mean'],
      'hands_coeffs': np.zeros((10, 45)),
      'bs_style': 'lbs',
      'bs_type': 'lrotmin',
      'J': fake_chumpy(np.zeros((16, 3))),
  }
  raw = _py2_pickle(official)
  assert pickle.SHORT_BINSTRING + bytes([len('bs_style')]) + b'bs_style' in raw  # a py2 str key
  assert b'chumpy.ch\nCh' in raw and b'scipy.sparse' in raw
  path = tmp_path / 'MANO_RIGHT.pkl'
  path.write_bytes(raw)
  model = mano.load(path)
  np.testing.assert_allclose(model.v_template, arrays['v_template'], atol=1e-7)
  np.testing.assert_allclose(model.shapedirs, arrays['shapedirs'], atol=1e-7)
  np.testing.assert_allclose(model.weights, arrays['weights'], atol=1e-7)
  np.testing.assert_allclose(
      model.J_regressor, arrays['J_regressor'] * (arrays['J_regressor'] > 1e-3), atol=1e-7
  )
  np.testing.assert_array_equal(model.faces, arrays['f'])
  assert model.parents == mano.MANO_PARENTS and model.tip_ids is None


def test_npz_with_official_keys_loads(tmp_path, right):
  path = tmp_path / 'hand.npz'
  np.savez(path, **mano.model_to_arrays(right))
  loaded = mano.load(path)
  np.testing.assert_array_equal(loaded.v_template, right.v_template)
  assert loaded.tip_ids == right.tip_ids


def test_every_file_key_is_required_and_enough(right):
  arrays = mano.model_to_arrays(right)
  for key in mano.FILE_KEYS:
    with pytest.raises(mano.ManoFileError, match=rf"missing key\(s\) \['{key}'\]"):
      mano.model_from_arrays({k: v for k, v in arrays.items() if k != key})
  official = mano.model_from_arrays({key: arrays[key] for key in mano.FILE_KEYS})
  np.testing.assert_array_equal(official.v_template, right.v_template)


def test_missing_truncated_and_wrong_files(tmp_path, right):
  with pytest.raises(FileNotFoundError, match='nowhere.pkl'):
    mano.load(tmp_path / 'nowhere.pkl')
  arrays = mano.model_to_arrays(right)
  good = pickle.dumps(arrays, protocol=2)
  truncated = tmp_path / 'MANO_RIGHT.pkl'
  truncated.write_bytes(good[: len(good) // 2])
  with pytest.raises(mano.ManoFileError, match='truncated'):
    mano.load(truncated)
  npz = tmp_path / 'cut.npz'
  np.savez(npz, **arrays)
  npz.write_bytes(npz.read_bytes()[:5000])
  with pytest.raises(mano.ManoFileError, match='cut.npz'):
    mano.load(npz)
  wrong = dict(arrays, v_template=arrays['v_template'][:700])
  path = tmp_path / 'wrong.npz'
  np.savez(path, **wrong)
  with pytest.raises(mano.ManoFileError, match=r"'v_template' has shape \(700, 3\)"):
    mano.load(path)
  missing = {k: v for k, v in arrays.items() if k != 'posedirs'}
  path = tmp_path / 'missing.npz'
  np.savez(path, **missing)
  with pytest.raises(mano.ManoFileError, match='posedirs'):
    mano.load(path)


def test_left_shapedirs_fix(tmp_path, right):
  # A buggy left file: mirrored except for shapedirs[:, 0, :], left equal to the right's (docs/design.md §2).
  left = mano.mirror_model(right)
  buggy = mano.model_to_arrays(left)
  buggy['shapedirs'][:, 0, :] = np.asarray(right.shapedirs)[:, 0, :]
  np.savez(tmp_path / 'MANO_RIGHT.npz', **mano.model_to_arrays(right))
  np.savez(tmp_path / 'MANO_LEFT.npz', **buggy)
  fixed = mano.load(tmp_path / 'MANO_LEFT.npz', side='left')
  np.testing.assert_allclose(fixed.shapedirs, left.shapedirs, atol=1e-7)
  # A correct left file is left alone.
  np.savez(tmp_path / 'MANO_LEFT.npz', **mano.model_to_arrays(left))
  np.testing.assert_allclose(
      mano.load(tmp_path / 'MANO_LEFT.npz', side='left').shapedirs, left.shapedirs
  )


# ----------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------


def test_random_poses_respect_limits_and_seed(right):
  poses = mano.sample_random_pose(np.random.default_rng(0), right, 64)
  assert poses.shape == (64, 48)
  np.testing.assert_array_equal(poses, mano.sample_random_pose(np.random.default_rng(0), right, 64))
  np.testing.assert_array_equal(
      mano.sample_random_pose(jax.random.PRNGKey(3), right, 5),
      mano.sample_random_pose(jax.random.PRNGKey(3), right, 5),
  )
  angles = mano.pose_to_angles(right, poses)
  limits = np.asarray(right.pose_limits)
  assert np.all(angles >= limits[None, ..., 0] - 1e-5) and np.all(
      angles <= limits[None, ..., 1] + 1e-5
  )
  assert np.all(angles[:, :12, 0] >= -1e-6)  # the four fingers never flex backwards
  for name in ('flat', 'fist', 'point', 'relaxed'):
    named = mano.pose_to_angles(right, mano.named_pose(right, name))
    assert np.all(named >= limits[None, ..., 0] - 1e-5) and np.all(
        named <= limits[None, ..., 1] + 1e-5
    )


def test_pose_helpers_respect_flat_hand_mean(right):
  absolute = mano.sample_random_pose(np.random.default_rng(1), right, 2)
  relative = mano.sample_random_pose(np.random.default_rng(1), right, 2, flat_hand_mean=False)
  np.testing.assert_allclose(
      mano.forward(right, absolute, flat_hand_mean=True)[0],
      mano.forward(right, relative, flat_hand_mean=False)[0],
      atol=1e-6,
  )
  # The choice itself: the two conventions differ by exactly the model's hands_mean on the 45 finger
  # values (forward adds it back when flat_hand_mean=False) and not at all on the global orientation.
  # The procedural hand's mean is far from 0, so a helper that ignored flat_hand_mean fails here.
  hands_mean = np.asarray(right.hands_mean, np.float64)
  assert hands_mean.shape == (45,) and np.abs(hands_mean).max() > 0.1
  oriented = {
      flat: mano.sample_random_pose(
          np.random.default_rng(3), right, 4, flat_hand_mean=flat, random_global_orient=True
      ).astype(np.float64)
      for flat in (True, False)
  }
  named = {
      flat: np.stack(
          [
              mano.named_pose(right, name, flat_hand_mean=flat)
              for name in ('flat', 'fist', 'point', 'relaxed')
          ]
      ).astype(np.float64)
      for flat in (True, False)
  }
  for poses in (
      {True: absolute.astype(np.float64), False: relative.astype(np.float64)},
      oriented,
      named,
  ):
    np.testing.assert_array_equal(poses[True][:, :3], poses[False][:, :3])
    np.testing.assert_allclose(
        poses[True][:, 3:] - poses[False][:, 3:],
        np.broadcast_to(hands_mean, poses[True][:, 3:].shape),
        rtol=0,
        atol=1e-6,
    )
  rotations = mano.sample_random_pose(np.random.default_rng(2), right, 8, random_global_orient=True)
  assert np.all(np.linalg.norm(rotations[:, :3], axis=1) <= np.pi + 1e-5)
  assert np.std(rotations[:, :3]) > 0.3
