"""Tests of diffhand_jax.losses on small hand-built meshes with hand-worked values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax.training import losses


def grid_mesh(size=3):
  """A flat size x size grid of vertices in the z = 0 plane, two triangles per cell: (N, 3), (F, 3)."""
  xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
  verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(size * size, np.float32)], 1)
  faces = []
  for row in range(size - 1):
    for col in range(size - 1):
      i = row * size + col
      faces += [[i, i + 1, i + size], [i + 1, i + size + 1, i + size]]
  return verts, np.array(faces, np.int32)


# ---------------------------------------------------------------------------------------------------
# L_smooth
# ---------------------------------------------------------------------------------------------------


def test_smooth_loss_is_zero_for_ground_truth_and_its_translation():
  verts, faces = grid_mesh()
  gt = jnp.asarray(verts)[None]
  assert float(losses.smooth_loss(gt, gt, faces)) == 0.0
  assert float(losses.smooth_loss(gt + jnp.array([0.3, -1.0, 2.0]), gt, faces)) == pytest.approx(
      0.0
  )
  # In-plane motion keeps every edge perpendicular to the (z) normals too.
  in_plane = gt.at[0, 4, :2].add(jnp.array([0.2, -0.1]))
  assert float(losses.smooth_loss(in_plane, gt, faces)) == pytest.approx(0.0, abs=1e-7)


def test_smooth_loss_of_a_bent_grid_hand_worked():
  verts, faces = grid_mesh()
  gt = jnp.asarray(verts)[None]
  height = 0.25
  bent = gt.at[0, 4, 2].set(height)  # lift the centre vertex out of the plane
  # Each face holding vertex 4 has two edges touching it, each with |e . z| = height; the third edge and
  # every other face stay in the plane. Mean over faces.
  faces_with_centre = int(np.sum(np.any(faces == 4, axis=1)))
  expected = 2 * height * faces_with_centre / len(faces)
  assert float(losses.smooth_loss(bent, gt, faces)) == pytest.approx(expected, rel=1e-6)
  assert expected > 0


def test_smooth_loss_uses_ground_truth_normals_and_per_sample_mask():
  verts, faces = grid_mesh()
  gt = jnp.asarray(verts)[None]
  bent = gt.at[0, 4, 2].set(0.5)
  # Predicting flat while the GT is bent is penalised too (the normals come from the GT).
  assert float(losses.smooth_loss(gt, bent, faces)) > 0
  batch_pred = jnp.concatenate([gt, bent])
  batch_gt = jnp.concatenate([gt, gt])
  only_bent = losses.smooth_loss(bent, gt, faces)
  assert float(
      losses.smooth_loss(batch_pred, batch_gt, faces, jnp.array([0.0, 1.0]))
  ) == pytest.approx(float(only_bent))
  assert float(losses.smooth_loss(batch_pred, batch_gt, faces, jnp.array([1.0, 0.0]))) == 0.0
  assert float(losses.smooth_loss(batch_pred, batch_gt, faces)) == pytest.approx(
      float(only_bent) / 2
  )


# ---------------------------------------------------------------------------------------------------
# L_vertex
# ---------------------------------------------------------------------------------------------------


def test_vertex_loss_hand_worked():
  gt = jnp.zeros((1, 2, 3))
  pred = jnp.array([[[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]])
  # Squared distances 9 and 0, mean over the 2 vertices.
  assert float(losses.vertex_loss(pred, gt)) == pytest.approx(4.5)
  pred2 = jnp.concatenate([pred, jnp.ones((1, 2, 3))])  # second sample: 3 and 3 -> 3
  gt2 = jnp.zeros((2, 2, 3))
  assert float(losses.vertex_loss(pred2, gt2)) == pytest.approx((4.5 + 3.0) / 2)
  assert float(losses.vertex_loss(pred2, gt2, jnp.array([True, False]))) == pytest.approx(4.5)
  assert float(losses.vertex_loss(pred2, gt2, jnp.array([0.0, 0.0]))) == 0.0
  per_vertex = jnp.array(
      [[1.0, 0.0], [0.0, 1.0]]
  )  # vertex 0 of sample 0 (9), vertex 1 of sample 1 (3)
  assert float(losses.vertex_loss(pred2, gt2, per_vertex)) == pytest.approx(6.0)


def test_euclidean_distance_hand_worked():
  gt = jnp.zeros((1, 2, 3))
  pred = jnp.array([[[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]]])  # distances 3 and 5
  assert float(losses.vertex_loss(pred, gt, distance='euclidean')) == pytest.approx(4.0)
  assert float(losses.vertex_loss(pred, gt)) == pytest.approx((9.0 + 25.0) / 2)
  # The gradient is the unit direction to the prediction, whatever its size; finite at 0.
  grad = jax.grad(lambda p: losses.vertex_loss(p, gt, distance='euclidean'))(pred)
  np.testing.assert_allclose(grad[0, 0], np.array([1.0, 2.0, 2.0]) / 3 / 2, rtol=1e-6)
  at_zero = jax.grad(lambda p: losses.vertex_loss(p, gt, distance='euclidean'))(gt)
  assert np.all(np.isfinite(at_zero)) and float(jnp.abs(at_zero).max()) == 0.0
  # The joint terms take the same distance: a 2D offset of 0.1 costs 0.1, not 0.01.
  gt_verts, regressor, gt_joints, camera, gt_2d = joint_setup()
  shifted = camera.at[:, 1].add(0.1)
  loss_3d, loss_2d = losses.joint_loss(
      gt_verts, gt_joints, regressor, shifted, gt_2d, distance='euclidean'
  )
  assert float(loss_2d) == pytest.approx(0.1, rel=1e-5) and float(loss_3d) < 1e-5
  with pytest.raises(ValueError, match='distance must be one of'):
    losses.vertex_loss(pred, gt, distance='l1')


# ---------------------------------------------------------------------------------------------------
# L_joint
# ---------------------------------------------------------------------------------------------------


def joint_setup(num_verts=9, num_joints=4, seed=0):
  rng = np.random.default_rng(seed)
  gt_verts = jnp.asarray(rng.normal(size=(2, num_verts, 3)), jnp.float32)
  regressor = np.zeros((num_joints, num_verts), np.float32)
  # Each joint averages two vertices; the last vertex is in no joint's support.
  for j in range(num_joints):
    regressor[j, [j, j + 1]] = 0.5
  regressor = jnp.asarray(regressor)
  gt_joints = jnp.einsum('jn,bnc->bjc', regressor, gt_verts)
  camera = jnp.array([[2.0, 0.1, -0.2], [0.5, 0.0, 0.3]])
  gt_2d = camera[:, None, :1] * gt_joints[..., :2] + camera[:, None, 1:]
  return gt_verts, regressor, gt_joints, camera, gt_2d


def test_joint_loss_is_zero_when_prediction_and_camera_are_exact():
  gt_verts, regressor, gt_joints, camera, gt_2d = joint_setup()
  loss_3d, loss_2d = losses.joint_loss(gt_verts, gt_joints, regressor, camera, gt_2d)
  assert float(loss_3d) == pytest.approx(0.0, abs=1e-12)
  assert float(loss_2d) == pytest.approx(0.0, abs=1e-12)


def test_joint_loss_2d_hand_worked_camera_offset():
  gt_verts, regressor, gt_joints, camera, gt_2d = joint_setup()
  shifted = camera.at[:, 1].add(0.1)  # every projected joint moves 0.1 in u
  loss_3d, loss_2d = losses.joint_loss(gt_verts, gt_joints, regressor, shifted, gt_2d)
  assert float(loss_3d) == pytest.approx(0.0, abs=1e-12)
  assert float(loss_2d) == pytest.approx(0.01, rel=1e-5)
  # has_2d masks samples out of the 2D term only.
  _, loss_2d_masked = losses.joint_loss(
      gt_verts, gt_joints, regressor, shifted, gt_2d, jnp.array([0.0, 0.0])
  )
  assert float(loss_2d_masked) == 0.0


def test_project_weak_perspective_hand_worked():
  joints = jnp.array([[[1.0, 2.0, 5.0], [-1.0, 0.0, 9.0]]])
  camera = jnp.array([[0.5, 0.1, -0.2]])
  expected = np.array([[[0.6, 0.8], [-0.4, -0.2]]])
  np.testing.assert_allclose(losses.project_weak_perspective(joints, camera), expected, atol=1e-6)


def test_joint_loss_uses_the_regressor():
  gt_verts, regressor, gt_joints, camera, gt_2d = joint_setup()
  pred = gt_verts.at[:, 1].add(
      jnp.array([0.2, 0.0, 0.0])
  )  # vertex 1 feeds joints 0 and 1 (w = 0.5)
  loss_3d, _ = losses.joint_loss(pred, gt_joints, regressor, camera, gt_2d)
  # Joints 0 and 1 move by 0.1 in x: squared 0.01 each, mean over 4 joints and 2 samples.
  assert float(loss_3d) == pytest.approx(2 * 0.01 / 4, rel=1e-5)
  # A different W gives a different loss.
  other = regressor.at[0, 1].set(0.0).at[0, 0].set(1.0)
  other_3d, _ = losses.joint_loss(pred, gt_joints, other, camera, gt_2d)
  assert abs(float(other_3d) - float(loss_3d)) > 1e-4


def test_vertex_outside_regressor_support_does_not_affect_joint_loss():
  gt_verts, regressor, gt_joints, camera, gt_2d = joint_setup()
  pred = gt_verts + 0.05
  base = losses.joint_loss(pred, gt_joints, regressor, camera, gt_2d)
  moved = losses.joint_loss(pred.at[:, 8].add(3.0), gt_joints, regressor, camera, gt_2d)
  np.testing.assert_allclose(np.array(base), np.array(moved), rtol=0, atol=0)
  grad_3d = jax.grad(lambda v: losses.joint_loss(v, gt_joints, regressor, camera, gt_2d)[0])(pred)
  assert float(jnp.abs(grad_3d[:, 8]).max()) == 0.0
  assert float(jnp.abs(grad_3d[:, 0]).max()) > 0.0


# ---------------------------------------------------------------------------------------------------
# total_loss
# ---------------------------------------------------------------------------------------------------


def total_setup():
  verts, faces = grid_mesh()
  gt_verts = jnp.stack([jnp.asarray(verts), jnp.asarray(verts) * 0.5])
  regressor = jnp.asarray(np.eye(4, 9, dtype=np.float32))  # joints = first 4 vertices
  gt_joints = gt_verts[:, :4]
  camera = jnp.array([[1.0, 0.0, 0.0], [2.0, 0.1, 0.1]])
  gt_2d = losses.project_weak_perspective(gt_joints, camera)
  return gt_verts, gt_joints, gt_2d, camera, regressor, faces


def test_total_loss_combines_parts_with_lambdas():
  gt_verts, gt_joints, gt_2d, camera, regressor, faces = total_setup()
  pred = gt_verts.at[:, 4, 2].add(0.3).at[:, 0, 0].add(0.1)
  loss, parts = losses.total_loss(
      pred,
      gt_verts,
      gt_joints,
      gt_2d,
      camera,
      regressor,
      faces,
      lambda_joint=2.0,
      lambda_smooth=0.5,
  )
  expected = parts['vertex'] + 2.0 * (parts['joint_3d'] + parts['joint_2d']) + 0.5 * parts['smooth']
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  assert float(parts['total']) == float(loss)
  assert float(parts['vertex']) == pytest.approx(float(losses.vertex_loss(pred, gt_verts)))
  for name in ('vertex', 'joint_3d', 'joint_2d', 'smooth'):
    assert float(parts[name]) > 0, name
  default_loss, _ = losses.total_loss(pred, gt_verts, gt_joints, gt_2d, camera, regressor, faces)
  expected_default = parts['vertex'] + 1.0 * parts['joint'] + 0.05 * parts['smooth']
  assert float(default_loss) == pytest.approx(float(expected_default), rel=1e-6)


def test_total_loss_has_3d_masks_every_3d_term():
  gt_verts, gt_joints, gt_2d, camera, regressor, faces = total_setup()
  pred = gt_verts.at[1].add(jnp.asarray(np.random.default_rng(0).normal(size=(9, 3)), jnp.float32))
  _, parts = losses.total_loss(
      pred,
      gt_verts,
      gt_joints,
      gt_2d,
      camera,
      regressor,
      faces,
      has_3d=jnp.array([True, False]),
      has_2d=jnp.array([True, False]),
  )
  for name in ('vertex', 'joint_3d', 'joint_2d', 'smooth', 'total'):
    assert float(parts[name]) == pytest.approx(0.0, abs=1e-12), name


def test_gradients_are_finite_and_jit_matches_eager():
  gt_verts, gt_joints, gt_2d, camera, regressor, faces = total_setup()
  # A zero-area GT face (two coincident vertices) and a prediction equal to the GT (|x| at 0).
  degenerate_gt = gt_verts.at[:, 1].set(gt_verts[:, 0])
  faces = np.concatenate([faces, [[0, 1, 3]]]).astype(np.int32)

  def loss_fn(pred, cam):
    return losses.total_loss(pred, degenerate_gt, gt_joints, gt_2d, cam, regressor, faces)[0]

  for pred in (degenerate_gt, degenerate_gt + 0.01):
    grads = jax.grad(loss_fn, argnums=(0, 1))(pred, camera)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  eager = loss_fn(degenerate_gt + 0.01, camera)
  jitted = jax.jit(loss_fn)(degenerate_gt + 0.01, camera)
  assert float(jitted) == pytest.approx(float(eager), rel=1e-6)
  assert np.isfinite(float(eager))


def test_gradient_of_vertex_loss_hand_worked():
  gt = jnp.zeros((1, 2, 3))
  pred = jnp.array([[[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]])
  # d/dV of mean_n |V_n - G_n|^2 = 2 (V - G) / N
  np.testing.assert_allclose(jax.grad(losses.vertex_loss)(pred, gt), 2 * np.asarray(pred) / 2)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_wrong_shapes_raise_clear_errors():
  gt_verts, gt_joints, gt_2d, camera, regressor, faces = total_setup()
  with pytest.raises(
      ValueError, match=r'vertex_loss: gt_verts must have shape \(2, 9, 3\), got \(2, 8, 3\)'
  ):
    losses.vertex_loss(gt_verts, gt_verts[:, :8])
  with pytest.raises(ValueError, match=r'joint_loss: joint_regressor must have shape \(\*, 9\)'):
    losses.joint_loss(gt_verts, gt_joints, regressor[:, :8], camera, gt_2d)
  with pytest.raises(
      ValueError, match=r'joint_loss: camera must have shape \(2, 3\), got \(2, 2\)'
  ):
    losses.joint_loss(gt_verts, gt_joints, regressor, camera[:, :2], gt_2d)
  with pytest.raises(ValueError, match=r'smooth_loss: faces must have shape \(\*, 3\)'):
    losses.smooth_loss(gt_verts, gt_verts, faces[:, :2])
  with pytest.raises(ValueError, match=r'total_loss: has_3d must have shape \(2,\), got \(3,\)'):
    losses.total_loss(
        gt_verts, gt_verts, gt_joints, gt_2d, camera, regressor, faces, has_3d=jnp.ones(3)
    )


def _upright_hand_joints(batch: int = 2) -> jnp.ndarray:
  """(B, 21, 3): wrist at 0, middle MCP 1 m up (-y), index MCP at (+1, -1, 0), little MCP (-1, -1, 0)."""
  joints = np.zeros((batch, 21, 3), np.float32)
  joints[:, 9] = (0.0, -1.0, 0.0)  # middle_1
  joints[:, 5] = (1.0, -1.0, 0.0)  # index_1
  joints[:, 17] = (-1.0, -1.0, 0.0)  # little_1
  return jnp.asarray(joints)


def test_orientation_loss_hand_worked():
  from diffhand_jax.geometry import conventions

  joints = _upright_hand_joints()
  # Finger axis (0, -1, 0); palm normal (1, -1, 0) x (-1, -1, 0) = (0, 0, -2) -> (0, 0, -1).
  target = np.array([0.0, -1.0, 0.0, 0.0, 0.0, -1.0])
  np.testing.assert_allclose(conventions.orientation_frame(joints)[0], target, atol=1e-7)
  np.testing.assert_allclose(
      conventions.orientation_frame(np.asarray(joints))[0], target, atol=1e-7
  )
  exact = jnp.asarray(np.tile(target, (2, 1)), jnp.float32)
  assert float(losses.orientation_loss(exact, joints)) == 0.0
  # The palm flipped (n_z = +1) in sample 0 only: (2)^2 = 4 there, 0 in sample 1 -> mean 2.
  flipped = exact.at[0, 5].set(1.0)
  assert float(losses.orientation_loss(flipped, joints)) == pytest.approx(2.0)
  assert float(losses.orientation_loss(flipped, joints, jnp.array([0.0, 1.0]))) == 0.0
  with pytest.raises(ValueError, match='pred_orientation'):
    losses.orientation_loss(exact[:, :3], joints)


def test_total_loss_adds_the_orientation_term_only_when_given():
  gt_verts, _, _, camera, _, faces = total_setup()
  # 21 joints this time (the orientation reads the wrist and three MCPs): joint j is vertex j % 9.
  regressor = jnp.asarray(np.eye(9, dtype=np.float32)[np.arange(21) % 9])
  gt_joints = jnp.einsum('jn,bnc->bjc', regressor, gt_verts)
  gt_2d = losses.project_weak_perspective(gt_joints, camera)
  pred = gt_verts.at[:, 4, 2].add(0.3)
  args = (pred, gt_verts, gt_joints, gt_2d, camera, regressor, faces)
  plain, plain_parts = losses.total_loss(*args)
  orientation = jnp.zeros((gt_verts.shape[0], 6))
  loss, parts = losses.total_loss(*args, orientation=orientation, lambda_orientation=0.5)
  assert 'orientation' not in plain_parts
  expected_term = float(losses.orientation_loss(orientation, gt_joints))
  assert expected_term > 0
  assert float(parts['orientation']) == pytest.approx(expected_term)
  assert float(loss) == pytest.approx(float(plain) + 0.5 * expected_term, rel=1e-6)
