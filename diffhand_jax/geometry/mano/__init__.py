"""MANO hand model in JAX: safe file loading, linear blend skinning, joint regressors, poses, fitting.

Conventions (docs/design.md §2):

* metres; MANO's 16 joints in MANO order (0 wrist; 1-3 index; 4-6 middle; 7-9 little; 10-12 ring;
  13-15 thumb); the 21-joint order is FreiHAND/OpenPose (wrist, thumb, index, middle, ring, little,
  each base -> tip).
* pose vectors are axis-angle, 48 = 3 global + 15 x 3 finger values, relative to the parent joint, as
  in MANO / smplx / manopth.

One concern a module:

  model.py            the `ManoModel` pytree, its sizes, the keys a model file holds (`FILE_KEYS`)
  official_pickle.py  reading the official pickles without running pickle code (chumpy and scipy stubs)
  files.py            `load` (.pkl or .npz), `model_from_arrays` / `model_to_arrays`, the left-hand
                      shapedirs fix, `mirror_model`, `load_procedural`
  layer.py            `forward` (skinning), `rodrigues`, `joints21`, `joint_regressor21`
  poses.py            `sample_random_pose`, `named_pose`, `pose_to_angles` (within the joint limits)
  fitting.py          `fit`: MANO parameters from a mesh, on the Levenberg–Marquardt of solver.py

Import it as ``from diffhand_jax.geometry import mano``; ``diffhand_jax.mano`` is the same names, the
public face users import.
"""

from diffhand_jax.geometry.mano.files import (
    PROCEDURAL_PATH,
    fix_left_shapedirs,
    load,
    load_procedural,
    mirror_model,
    model_from_arrays,
    model_to_arrays,
)
from diffhand_jax.geometry.mano.fitting import fit
from diffhand_jax.geometry.mano.layer import (
    MANO16_TO_21,
    TIP_IDS,
    forward,
    full_pose,
    joint_regressor21,
    joints21,
    regress_joints16,
    rodrigues,
)
from diffhand_jax.geometry.mano.model import (
    FILE_KEYS,
    MANO_PARENTS,
    NUM_HAND_POSE,
    NUM_JOINTS,
    NUM_VERTICES,
    ManoFileError,
    ManoModel,
)
from diffhand_jax.geometry.mano.poses import named_pose, pose_to_angles, sample_random_pose

__all__ = [
    'FILE_KEYS',
    'MANO16_TO_21',
    'MANO_PARENTS',
    'NUM_HAND_POSE',
    'NUM_JOINTS',
    'NUM_VERTICES',
    'PROCEDURAL_PATH',
    'TIP_IDS',
    'ManoFileError',
    'ManoModel',
    'fit',
    'fix_left_shapedirs',
    'forward',
    'full_pose',
    'joint_regressor21',
    'joints21',
    'load',
    'load_procedural',
    'mirror_model',
    'model_from_arrays',
    'model_to_arrays',
    'named_pose',
    'pose_to_angles',
    'regress_joints16',
    'rodrigues',
    'sample_random_pose',
]
