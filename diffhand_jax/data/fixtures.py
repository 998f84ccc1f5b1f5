"""Tiny copies of FreiHAND v2, HO-3D v2 and DexYCB in their official layouts, for the builders' tests.

  python -m diffhand_jax.make_fixtures --out DIR [--which=freihand,ho3d,dex_ycb]

writes DIR/mano/{MANO_RIGHT,MANO_LEFT}.pkl (the procedural hand, a licence-free stand-in for MANO, as plain
numpy pickles with the official keys) and DIR/<dataset>/ laid out as the official downloads (docs/design.md §7):
file names, json nesting, Python-2-style latin1 pickles for HO-3D's meta files, DexYCB's npz keys and yml
calibration. The hands are posed procedural MANO meshes, so every annotation is known exactly.

Each `make_*` function also returns the ground truth in *our* conventions (OpenCV camera frame, metres,
21-order, docs/design.md §2), computed directly from the generating parameters and not from the files, so that
the tests can check what the builders read against an independent answer.
"""

from __future__ import annotations

import io
import importlib.util
import json
import os
import pickle
import struct
from typing import Any

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation
import yaml

from diffhand_jax.geometry import conventions, mano

FLIP_GL = conventions.OPENGL_FLIP  # OpenCV <-> OpenGL
HO3D_DEPTH_SCALE = 0.00012498664727900177

# --------------------------------------------------------------------------------------------------
# MANO stand-ins and hands
# --------------------------------------------------------------------------------------------------


def write_mano_standins(out_dir: str) -> str:
  """Writes MANO_RIGHT.pkl / MANO_LEFT.pkl (procedural hand, official keys, plain numpy) and returns the folder."""
  os.makedirs(out_dir, exist_ok=True)
  for side, name in (('right', 'MANO_RIGHT.pkl'), ('left', 'MANO_LEFT.pkl')):
    arrays = mano.model_to_arrays(mano.load_procedural(side))
    with open(os.path.join(out_dir, name), 'wb') as handle:
      pickle.dump({key: arrays[key] for key in mano.FILE_KEYS}, handle, protocol=2)
  return out_dir


class _Hands:
  """MANO forward passes on the stand-ins (loaded from the written files, as the builders will)."""

  def __init__(self, mano_dir: str):
    self.models = {
        side: mano.load(os.path.join(mano_dir, f'MANO_{side.upper()}.pkl'), side=side)
        for side in ('right', 'left')
    }

  def pose(self, rng: np.random.Generator, side: str, *, flat_hand_mean: bool) -> np.ndarray:
    """(48,) plausible pose with a random global orientation (camera frame)."""
    return mano.sample_random_pose(
        rng, self.models[side], 1, flat_hand_mean=flat_hand_mean, random_global_orient=True
    )[0].astype(np.float64)

  def forward(
      self,
      side: str,
      pose: np.ndarray,
      betas: np.ndarray,
      trans: np.ndarray,
      *,
      flat_hand_mean: bool,
  ):
    verts, joints16 = mano.forward(
        self.models[side],
        np.asarray(pose, np.float32)[None],
        np.asarray(betas, np.float32)[None],
        flat_hand_mean=flat_hand_mean,
        trans=np.asarray(trans, np.float32)[None],
    )
    return np.asarray(verts[0], np.float64), np.asarray(joints16[0], np.float64)

  def rest_root(self, side: str, betas: np.ndarray) -> np.ndarray:
    model = self.models[side]
    shaped = (
        np.asarray(model.v_template, np.float64) + np.asarray(model.shapedirs, np.float64) @ betas
    )
    return np.asarray(model.J_regressor, np.float64)[0] @ shaped

  def place(self, rng, side, pose, betas, root_target, *, flat_hand_mean):
    """trans that puts the wrist at ``root_target``; returns (trans, vertices, joints16)."""
    trans = np.asarray(root_target, np.float64) - self.rest_root(side, betas)
    verts, joints16 = self.forward(side, pose, betas, trans, flat_hand_mean=flat_hand_mean)
    return trans, verts, joints16


def _joints21(verts: np.ndarray, joints16: np.ndarray, tips: str) -> np.ndarray:
  return np.asarray(mano.joints21(np.float32(verts), np.float32(joints16), tips), np.float64)


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  uvw = points @ K.T
  return uvw[:, :2] / uvw[:, 2:3]


def _rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
  return Rotation.from_rotvec(rotvec).as_matrix()


def _matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
  return Rotation.from_matrix(matrix).as_rotvec()


def _noise_image(
    rng: np.random.Generator, height: int, width: int, base: tuple[int, int, int]
) -> np.ndarray:
  """A flat colour plus mild noise, so that each file's mean colour identifies it."""
  noise = rng.integers(-12, 13, size=(height, width, 3))
  return np.clip(np.array(base)[None, None] + noise, 0, 255).astype(np.uint8)


def _save_jpg(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, format='JPEG', quality=95)


def _save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, format='PNG')


def _dump_json(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as handle:
    json.dump(value, handle)


# --------------------------------------------------------------------------------------------------
# Python 2 style pickles (HO-3D meta files)
# --------------------------------------------------------------------------------------------------


def pristine_pickle_module():
  """A fresh copy of the standard library's pure-Python pickler. `import dill` (which datasets and
  apache-beam bring) writes its reducers into the shared `pickle._Pickler.dispatch`; a file imitating a
  Python-2-era pickle must not contain dill's globals, whatever else the process imported."""
  spec = importlib.util.find_spec('pickle')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_PICKLE = pristine_pickle_module()


class _Py2Pickler(_PICKLE._Pickler):  # pylint: disable=protected-access
  """Protocol 2 with Python 2's str opcodes (BINSTRING) and numpy's Python-2-era module names.

  Loading such a file in Python 3 needs ``encoding='latin1'``, like the real HO-3D meta files.
  """

  dispatch = dict(_PICKLE._Pickler.dispatch)  # pylint: disable=protected-access

  def _save_py2_string(self, obj):
    data = obj.encode('latin1') if isinstance(obj, str) else bytes(obj)
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
    self.memoize(obj)

  dispatch[str] = _save_py2_string
  dispatch[bytes] = _save_py2_string

  def save_global(self, obj, name=None):
    module = getattr(obj, '__module__', None)
    name = name or getattr(obj, '__qualname__', None) or obj.__name__
    module = {'numpy._core.multiarray': 'numpy.core.multiarray'}.get(module, module)
    self.write(pickle.GLOBAL + module.encode() + b'\n' + name.encode() + b'\n')
    self.memoize(obj)

  dispatch[type] = save_global


def dump_py2_pickle(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buffer = io.BytesIO()
  _Py2Pickler(buffer, protocol=2).dump(value)
  with open(path, 'wb') as handle:
    handle.write(buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# FreiHAND v2
# --------------------------------------------------------------------------------------------------

FREIHAND_VERSIONS = ('gs', 'hom', 'sample', 'auto')


def make_freihand(
    root: str,
    mano_dir: str,
    *,
    num_train: int = 3,
    num_eval: int = 2,
    with_eval_gt: bool = True,
    seed: int = 0,
) -> dict:
  """FreiHAND v2 in the official layout (no top-level folder): 224x224 images, 4 versions per training sample.

  Returns ground truth: {'train': {'K','xyz','verts','mano'}, 'evaluation': {...}} as arrays per
  annotation index, plus 'image_colour': {('training'|'evaluation', image id): base colour}.
  """
  rng = np.random.default_rng(seed)
  hands = _Hands(mano_dir)
  truth: dict = {'image_colour': {}}
  for set_name, count in (('training', num_train), ('evaluation', num_eval)):
    Ks, xyzs, vertss, manos, scales = [], [], [], [], []
    for index in range(count):
      f = rng.uniform(450.0, 600.0)
      K = np.array(
          [[f, 0.0, 112.0 + rng.uniform(-4, 4)], [0.0, f, 112.0 + rng.uniform(-4, 4)], [0, 0, 1.0]]
      )
      pose = hands.pose(
          rng, 'right', flat_hand_mean=False
      )  # FreiHAND's MANO uses flat_hand_mean=False
      betas = rng.normal(0.0, 0.5, size=10)
      root_target = np.array(
          [rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.6, 0.75)]
      )
      _, verts, joints16 = hands.place(rng, 'right', pose, betas, root_target, flat_hand_mean=False)
      xyz = _joints21(verts, joints16, 'freihand')
      uv_root = _project(xyz[:1], K)[0]
      scale = float(np.linalg.norm(xyz[10] - xyz[9]))  # the middle finger's proximal bone
      Ks.append(K.tolist())
      xyzs.append(xyz.tolist())
      vertss.append(verts.tolist())
      manos.append([list(pose) + list(betas) + list(uv_root) + [scale]])  # [[61 floats]]
      scales.append(scale)
    key = 'train' if set_name == 'training' else 'evaluation'
    truth[key] = {
        'K': np.array(Ks),
        'xyz': np.array(xyzs),
        'verts': np.array(vertss),
        'mano': np.array(manos)[:, 0],
        'scale': np.array(scales),
    }
    _dump_json(os.path.join(root, f'{set_name}_K.json'), Ks)
    _dump_json(os.path.join(root, f'{set_name}_scale.json'), scales)
    if set_name == 'training' or with_eval_gt:
      _dump_json(os.path.join(root, f'{set_name}_xyz.json'), xyzs)
      _dump_json(os.path.join(root, f'{set_name}_verts.json'), vertss)
      _dump_json(os.path.join(root, f'{set_name}_mano.json'), manos)
    versions = len(FREIHAND_VERSIONS) if set_name == 'training' else 1
    for image_id in range(count * versions):
      colour = tuple(int(c) for c in rng.integers(30, 226, size=3))
      truth['image_colour'][(set_name, image_id)] = colour
      _save_jpg(
          os.path.join(root, set_name, 'rgb', f'{image_id:08d}.jpg'),
          _noise_image(rng, 224, 224, colour),
      )
    if set_name == 'training':
      for index in range(count):
        mask = np.zeros((224, 224), np.uint8)
        uv = _project(truth['train']['verts'][index], truth['train']['K'][index])
        cols = np.clip(np.round(uv).astype(int), 0, 223)
        mask[cols[:, 1], cols[:, 0]] = 255
        os.makedirs(os.path.join(root, 'training', 'mask'), exist_ok=True)
        Image.fromarray(mask).save(
            os.path.join(root, 'training', 'mask', f'{index:08d}.jpg'), quality=95
        )
  return truth


# --------------------------------------------------------------------------------------------------
# HO-3D v2
# --------------------------------------------------------------------------------------------------

HO3D_SIZE = (48, 64)  # (height, width): a tenth of the real 480x640
HO3D_TRAIN = {
    'ABF10': 3,
    'MC1': 2,
}  # frames on disk; the last ABF10 frame is unannotated and unlisted
HO3D_EVAL = {'SM1': 2}


def _ho3d_K(rng) -> np.ndarray:
  f = rng.uniform(60.0, 64.0)
  return np.array(
      [[f, 0.0, 32.0 + rng.uniform(-1, 1)], [0.0, f, 24.0 + rng.uniform(-1, 1)], [0.0, 0.0, 1.0]]
  )


def _ho3d_object_keys(rng) -> dict:
  return {
      'objRot': rng.normal(size=(3, 1)),
      'objTrans': rng.normal(size=3),
      'objName': '021_bleach_cleanser',
      'objLabel': 12,
      'objCorners3D': rng.normal(size=(8, 3)),
      'objCorners3DRest': rng.normal(size=(8, 3)),
  }


def _ho3d_depth_png(rng, depth_m: np.ndarray) -> np.ndarray:
  value = np.round(depth_m / HO3D_DEPTH_SCALE).astype(np.int64)
  rgb = np.zeros(depth_m.shape + (3,), np.uint8)
  rgb[..., 0] = value % 256  # cv2 reads BGR: its channel 2 (R in the file) is the low byte
  rgb[..., 1] = value // 256
  return rgb


def make_ho3d(root: str, mano_dir: str, *, seed: int = 1) -> dict:
  """HO-3D v2 in the official layout, 64x48 frames (the real ones are 640x480).

  Returns ground truth keyed by (split, 'SEQ/FRAME'): OpenCV-frame 'joints' (21-order), 'verts', 'K',
  'pose_cv' (48, flat_hand_mean=False, camera frame), 'betas', 'trans_cv'; plus the raw meta dicts and
  'depth_m' per frame; eval frames hold 'root' and 'bbox'.
  """
  rng = np.random.default_rng(seed)
  hands = _Hands(mano_dir)
  hands_mean = np.asarray(hands.models['right'].hands_mean, np.float64)
  truth: dict = {}
  listed = {'train': [], 'evaluation': []}
  for split, sequences in (('train', HO3D_TRAIN), ('evaluation', HO3D_EVAL)):
    for seq, frames in sequences.items():
      for frame in range(frames):
        frame_id = f'{frame:04d}'
        base = os.path.join(root, split, seq)
        K = _ho3d_K(rng)
        _save_png(
            os.path.join(base, 'rgb', f'{frame_id}.png'),
            _noise_image(rng, *HO3D_SIZE, tuple(int(c) for c in rng.integers(30, 226, 3))),
        )
        depth_m = rng.uniform(0.4, 1.2, size=HO3D_SIZE)
        _save_png(os.path.join(base, 'depth', f'{frame_id}.png'), _ho3d_depth_png(rng, depth_m))
        meta_path = os.path.join(base, 'meta', f'{frame_id}.pkl')
        unannotated = split == 'train' and seq == 'ABF10' and frame == frames - 1
        if unannotated:  # as in the release: such frames hold None and are absent from train.txt
          dump_py2_pickle(
              meta_path,
              {
                  key: None
                  for key in (
                      'handPose',
                      'handBeta',
                      'handTrans',
                      'handJoints3D',
                      'camMat',
                      'objRot',
                      'objTrans',
                      'objName',
                  )
              },
          )
          continue
        listed[split].append(f'{seq}/{frame_id}')
        # The hand in our convention first: OpenCV frame, flat_hand_mean=False.
        pose_cv = hands.pose(rng, 'right', flat_hand_mean=False)
        betas = rng.normal(0.0, 0.5, size=10)
        root_target = np.array(
            [rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.5, 0.6)]
        )
        trans_cv, verts, joints16 = hands.place(
            rng, 'right', pose_cv, betas, root_target, flat_hand_mean=False
        )
        joints = _joints21(verts, joints16, 'ho3d')
        entry = {
            'joints': joints,
            'verts': verts,
            'K': K,
            'pose_cv': pose_cv,
            'betas': betas,
            'trans_cv': trans_cv,
            'depth_m': depth_m,
        }
        # The same hand as HO-3D stores it: OpenGL frame, flat_hand_mean=True.
        rest_root = hands.rest_root('right', betas)
        rot_gl = np.diag(FLIP_GL) @ _rotvec_to_matrix(pose_cv[:3])
        hand_pose = np.concatenate([_matrix_to_rotvec(rot_gl), pose_cv[3:] + hands_mean])
        hand_trans = FLIP_GL * (rest_root + trans_cv) - rest_root
        ho3d_order = np.concatenate([joints16, verts[list(mano.TIP_IDS['ho3d'])]]) * FLIP_GL
        if split == 'train':
          meta = {
              'handPose': hand_pose,
              'handBeta': betas,
              'handTrans': hand_trans,
              'handJoints3D': ho3d_order,
              'camMat': K,
              **_ho3d_object_keys(rng),
          }
        else:
          uv = _project(verts, K)
          bbox = np.concatenate([uv.min(0), uv.max(0)])
          meta = {
              'handJoints3D': ho3d_order[0],
              'handBoundingBox': bbox,
              'camMat': K,
              **_ho3d_object_keys(rng),
          }
          entry.update(root=joints[0], bbox=bbox)
        entry['meta'] = meta
        dump_py2_pickle(meta_path, meta)
        truth[(split, f'{seq}/{frame_id}')] = entry
  for split, names in listed.items():
    with open(os.path.join(root, f'{split}.txt'), 'w') as handle:
      handle.write('\n'.join(names) + '\n')
  truth['listed'] = listed
  return truth


# --------------------------------------------------------------------------------------------------
# DexYCB
# --------------------------------------------------------------------------------------------------

DEXYCB_SUBJECTS = ('20200709-subject-01', '20200813-subject-02', '20200820-subject-03')
DEXYCB_SERIALS = ('836212060125', '839512060362')
DEXYCB_SEQUENCES_PER_SUBJECT = 5  # S0 needs i % 5 == 4 to exist
DEXYCB_SIZE = (48, 64)


def make_dex_ycb(root: str, mano_dir: str, *, seed: int = 2) -> dict:
  """DexYCB in the official layout (3 subjects x 5 sequences x 2 cameras, 64x48 frames).

  Sequence 1 of subject 2 is a left hand; a few frames carry the invalid labels that HandOccNet's
  filtering drops (all -1 joint_3d, all -1 joint_2d, all-zero pose_m). The test sequence (subject 3,
  sequence 4) has two frames, and its camera-0 frame 1 has an all -1 joint_3d, so the toolkit's sample ids
  of the kept test samples have a gap (0, 2, 3). The pose_m and joint_2d cases keep a valid joint_3d: the
  toolkit's hpe_eval would still score them.

  Returns ground truth keyed by 'subject/sequence/serial/frame': 'joints', 'verts', 'K', 'side', 'pose'
  (axis-angle, flat_hand_mean=False), 'betas', 'trans', 'split' (S0) or 'invalid' (the reason), 'object_id'.
  """
  rng = np.random.default_rng(seed)
  hands = _Hands(mano_dir)
  truth: dict = {}
  intrinsics = {}
  for serial in DEXYCB_SERIALS:
    fx, fy = rng.uniform(60, 64), rng.uniform(60, 64)
    ppx, ppy = 32 + rng.uniform(-1, 1), 24 + rng.uniform(-1, 1)
    intrinsics[serial] = np.array([[fx, 0, ppx], [0, fy, ppy], [0, 0, 1.0]])
    path = os.path.join(root, 'calibration', 'intrinsics', f'{serial}_640x480.yml')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
      yaml.safe_dump(
          {
              'color': {'fx': float(fx), 'fy': float(fy), 'ppx': float(ppx), 'ppy': float(ppy)},
              'depth': {'fx': float(fx), 'fy': float(fy), 'ppx': float(ppx), 'ppy': float(ppy)},
          },
          handle,
      )
  invalid_at = {
      ('20200709-subject-01', 0, DEXYCB_SERIALS[1], 0): 'joint_3d',
      ('20200813-subject-02', 2, DEXYCB_SERIALS[0], 0): 'pose_m',
      ('20200820-subject-03', 3, DEXYCB_SERIALS[1], 1): 'joint_2d',
      ('20200820-subject-03', 4, DEXYCB_SERIALS[0], 1): 'joint_3d',
  }
  for subject_index, subject in enumerate(DEXYCB_SUBJECTS):
    side_of = {'20200813-subject-02': {1: 'left'}}.get(subject, {})
    for calib_side in ('right', 'left'):
      betas = rng.normal(0.0, 0.5, size=10)
      path = os.path.join(root, 'calibration', f'mano_{subject}_{calib_side}', 'mano.yml')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as handle:
        yaml.safe_dump({'betas': [float(b) for b in betas]}, handle)
    for seq_index in range(DEXYCB_SEQUENCES_PER_SUBJECT):
      sequence = f'{subject[:8]}_{141754 + 97 * seq_index:06d}'
      side = side_of.get(seq_index, 'right')
      calib = f'{subject}_{side}'
      with open(os.path.join(root, 'calibration', f'mano_{calib}', 'mano.yml')) as handle:
        betas = np.array(yaml.safe_load(handle)['betas'], np.float64)
      num_frames = 2 if seq_index == 3 or (subject_index == 2 and seq_index == 4) else 1
      ycb_ids = [int(i) for i in rng.choice(np.arange(1, 22), size=2, replace=False)]
      grasp = int(rng.integers(0, 2))
      seq_dir = os.path.join(root, subject, sequence)
      os.makedirs(seq_dir, exist_ok=True)
      with open(os.path.join(seq_dir, 'meta.yml'), 'w') as handle:
        yaml.safe_dump(
            {
                'serials': list(DEXYCB_SERIALS),
                'num_frames': num_frames,
                'ycb_ids': ycb_ids,
                'ycb_grasp_ind': grasp,
                'mano_sides': [side],
                'mano_calib': [calib],
                'extrinsics': '20200702_151821',
                'pcd': None,
            },
            handle,
        )
      if seq_index % 5 != 4:
        split = 'train'
      else:
        split = 'validation' if subject_index < 2 else 'test'
      for serial in DEXYCB_SERIALS:
        K = intrinsics[serial]
        for frame in range(num_frames):
          pose = hands.pose(rng, side, flat_hand_mean=False)
          root_target = np.array(
              [rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.5, 0.6)]
          )
          trans, verts, joints16 = hands.place(
              rng, side, pose, betas, root_target, flat_hand_mean=False
          )
          joints = _joints21(verts, joints16, 'dexycb')
          uv = _project(joints, K)
          components = np.asarray(hands.models[side].hands_components, np.float64)
          pca = pose[3:] @ np.linalg.pinv(components)  # hand = pca @ components
          pose_m = np.concatenate([pose[:3], pca, trans])[None].astype(np.float32)
          joint_3d = joints[None].astype(np.float32)
          joint_2d = uv[None].astype(np.float32)
          reason = invalid_at.get((subject, seq_index, serial, frame))
          if reason == 'joint_3d':
            joint_3d = -np.ones_like(joint_3d)
          elif reason == 'joint_2d':
            joint_2d = -np.ones_like(joint_2d)
          elif reason == 'pose_m':
            pose_m = np.zeros_like(pose_m)
          seg = np.zeros(DEXYCB_SIZE, np.uint8)
          seg[5:15, 5:20] = ycb_ids[grasp]
          cols = np.clip(np.round(uv).astype(int), 0, [DEXYCB_SIZE[1] - 1, DEXYCB_SIZE[0] - 1])
          seg[cols[:, 1], cols[:, 0]] = 255
          sample_dir = os.path.join(seq_dir, serial)
          os.makedirs(sample_dir, exist_ok=True)
          np.savez(
              os.path.join(sample_dir, f'labels_{frame:06d}.npz'),
              seg=seg,
              pose_y=rng.normal(size=(2, 3, 4)).astype(np.float32),
              pose_m=pose_m,
              joint_3d=joint_3d,
              joint_2d=joint_2d,
          )
          colour = tuple(int(c) for c in rng.integers(30, 226, 3))
          _save_jpg(
              os.path.join(sample_dir, f'color_{frame:06d}.jpg'),
              _noise_image(rng, *DEXYCB_SIZE, colour),
          )
          depth_mm = rng.integers(400, 1200, size=DEXYCB_SIZE).astype(np.uint16)
          Image.fromarray(depth_mm).save(
              os.path.join(sample_dir, f'aligned_depth_to_color_{frame:06d}.png')
          )
          truth[f'{subject}/{sequence}/{serial}/{frame}'] = {
              'joints': joints,
              'verts': verts,
              'K': K,
              'side': side,
              'pose': pose,
              'betas': betas,
              'trans': trans,
              'uv': uv,
              'split': split,
              'invalid': reason,
              'object_id': ycb_ids[grasp],
              'depth_mm': depth_mm,
              'colour': colour,
              'pca': pca,
          }
  return truth


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

MAKERS = {'freihand': make_freihand, 'ho3d': make_ho3d, 'dex_ycb': make_dex_ycb}


def make(out: str, which=('freihand', 'ho3d', 'dex_ycb')) -> dict:
  """Writes OUT/mano and OUT/<dataset> for each dataset in ``which``; returns {dataset: ground truth}."""
  mano_dir = write_mano_standins(os.path.join(out, 'mano'))
  return {name: MAKERS[name](os.path.join(out, name), mano_dir) for name in which}
