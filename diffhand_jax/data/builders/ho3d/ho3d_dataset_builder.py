"""HO-3D v2 (Hampali et al. 2020) as a TFDS dataset in diffhand-jax's common schema (docs/design.md §7).

  DIFFHAND_MANO_DIR=/path/to/mano tfds build datasets/ho3d --manual_dir=/path/to/HO3D_v2 --data_dir=... \
      --file_format=array_record  # streamed by the input pipeline

Splits:
  train       the frames listed in train.txt (frames on disk but not listed, e.g. unannotated ones whose
              meta holds None, are skipped and counted). A listed frame with a None or malformed annotation
              is an error naming the file.
  evaluation  the frames of evaluation.txt, in its order (the submission's order). Only the root joint and
              the hand box are public: has_3d=False, zero 3D targets; `root_joint` and `bbox` are filled.

Conversions (docs/design.md §2), applied on read:
  * HO-3D stores the OpenGL camera frame; points are mapped to OpenCV with diag(1, -1, -1).
  * handJoints3D is in HO-3D's joint order (MANO's 16, then the tips thumb, index, middle, ring, little);
    it is reordered to the 21-order with [0,13,14,15,16,1,2,3,17,4,5,6,18,10,11,12,19,7,8,9,20].
  * Vertices are MANO (flat_hand_mean=True, as HO-3D fits it) of handPose / handBeta, plus handTrans, then
    flipped to OpenCV. MANO_RIGHT.pkl comes from the builder config's `mano_dir` or $DIFFHAND_MANO_DIR.
  * `mano_pose` is re-expressed for our convention: the global rotation in the OpenCV frame and the finger
    pose relative to MANO's mean (flat_hand_mean=False), with `mano_trans` such that
    mano.forward(mano_pose, mano_shape, flat_hand_mean=False) + mano_trans == vertices_3d.
    The raw handPose / handTrans are kept as `ho3d_hand_pose` / `ho3d_hand_trans` (OpenGL frame).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from diffhand_jax.data import sources
from diffhand_jax.geometry import conventions

HO3D_TO_21 = conventions.HO3D_TO_21  # HO-3D's joint order -> the 21-order
FLIP = conventions.OPENGL_FLIP  # OpenGL <-> OpenCV
DEPTH_SCALE = 0.00012498664727900177  # metres per unit of the decoded depth value

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download HO-3D v2 (HO3D_v2.zip) from https://www.tugraz.at/index.php?id=40231 (the HO-3D page links the
form) and unzip it; pass the folder holding train/, evaluation/, train.txt and evaluation.txt as
--manual_dir:
  train/<SEQ>/{rgb/%04d.png, depth/%04d.png, meta/%04d.pkl}, evaluation/<SEQ>/{rgb,depth,meta}/...,
  train.txt, evaluation.txt
The builder also needs MANO (MANO_RIGHT.pkl, MANO_LEFT.pkl from https://mano.is.tue.mpg.de): set
DIFFHAND_MANO_DIR=/path/to/folder, or pass --config '{"name": "custom", "mano_dir": "/path/to/folder"}'
(a json config needs a name other than "default"; train with --config.dataset.config_name=custom).
"""


@dataclasses.dataclass(eq=False)
class Ho3dConfig(tfds.core.BuilderConfig):
  """`mano_dir`: folder with MANO_RIGHT.pkl / MANO_LEFT.pkl ('' = $DIFFHAND_MANO_DIR).
  `with_depth`: also store the depth maps (uint16, metres = value * 0.00012498664727900177)."""

  mano_dir: str = ''
  with_depth: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for HO-3D v2."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      Ho3dConfig(name='default', description='RGB frames, 3D targets in the OpenCV frame.')
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    features = sources.common_features('png')
    tensor = tfds.features.Tensor
    features.update(
        {
            'mano_trans': tensor(
                shape=(3,),
                dtype=np.float32,
                doc='vertices_3d = mano.forward(mano_pose, mano_shape, flat_hand_mean=False) + mano_trans',
            ),
            'root_joint': tensor(
                shape=(3,), dtype=np.float32, doc='wrist, metres, OpenCV frame (also in evaluation)'
            ),
            'ho3d_hand_pose': tensor(
                shape=(48,), dtype=np.float32, doc='raw handPose (OpenGL, flat_hand_mean=True)'
            ),
            'ho3d_hand_trans': tensor(shape=(3,), dtype=np.float32, doc='raw handTrans (OpenGL)'),
            'sequence': tfds.features.Text(doc='sequence name, e.g. ABF10'),
            'frame': tfds.features.Text(
                doc="frame id as in train.txt / evaluation.txt, e.g. '0000'"
            ),
        }
    )
    if self.builder_config.with_depth:
      features['depth'] = tfds.features.Image(
          shape=(None, None, 1),
          dtype=np.uint16,
          doc=f'metres = value * {DEPTH_SCALE}; 0 = no reading',
      )
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        homepage='https://github.com/shreyashampali/ho3d',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    mano_dir = sources.resolve_mano_dir(self.builder_config.mano_dir, 'ho3d')
    hands = sources.ManoEvaluator(mano_dir)
    return {
        'train': self._generate_examples(root, 'train', hands),
        'evaluation': self._generate_examples(root, 'evaluation', hands),
    }

  def _generate_examples(self, root: str, split: str, hands: sources.ManoEvaluator):
    names = read_split_list(root, split)
    unlisted = _count_unlisted(root, split, names)
    if unlisted:
      print(
          f'ho3d: {split}: skipped {unlisted} frame(s) on disk that {split}.txt does not list',
          flush=True,
      )
    for index, name in enumerate(names):
      yield index, make_example(root, split, index, name, hands, self.builder_config.with_depth)


def read_split_list(root: str, split: str) -> list[str]:
  path = sources.require_file(os.path.join(root, f'{split}.txt'), 'split list')
  with open(path) as handle:
    names = [line.strip() for line in handle if line.strip()]
  for line_number, name in enumerate(names, start=1):
    if not re.fullmatch(r'[^/\s]+/\d+', name):
      raise sources.SourceError(f'{path}: line {line_number} is {name!r}, expected SEQ/FRAME')
  return names


def _count_unlisted(root: str, split: str, names: list[str]) -> int:
  listed = set(names)
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise sources.SourceError(f'{folder}: folder is missing (see MANUAL_DOWNLOAD_INSTRUCTIONS)')
  count = 0
  for seq in os.listdir(folder):
    meta_dir = os.path.join(folder, seq, 'meta')
    if os.path.isdir(meta_dir):
      count += sum(
          1 for f in os.listdir(meta_dir) if f.endswith('.pkl') and f'{seq}/{f[:-4]}' not in listed
      )
  return count


def _rgb_path(base: str, frame: str) -> str:
  png = os.path.join(base, 'rgb', f'{frame}.png')
  jpg = os.path.join(base, 'rgb', f'{frame}.jpg')  # HO-3D v3 ships jpg
  return jpg if not os.path.isfile(png) and os.path.isfile(jpg) else png


def read_depth(path: str) -> np.ndarray:
  """HO-3D's depth png -> (H, W) uint16 value; metres = value * DEPTH_SCALE.

  The value is R + 256 G of the file's RGB channels (the toolkit reads it with cv2 as BGR and takes channel
  2 + 256 x channel 1, i.e. R and G).
  """
  rgb, _, _ = sources.read_rgb(path, what='depth image')
  return (rgb[..., 0].astype(np.uint16) + rgb[..., 1].astype(np.uint16) * 256).astype(np.uint16)


def make_example(
    root: str, split: str, index: int, name: str, hands: sources.ManoEvaluator, with_depth: bool
) -> dict:
  seq, frame = name.split('/')
  base = os.path.join(root, split, seq)
  meta_path = os.path.join(base, 'meta', f'{frame}.pkl')
  where = f'{meta_path} ({split}.txt line {index + 1}, {name})'
  meta = sources.load_latin1_pickle(meta_path)
  if not isinstance(meta, dict):
    raise sources.SourceError(f'{where}: expected a dict, got {type(meta).__name__}')

  def get(key, shape):
    if key not in meta:
      raise sources.SourceError(f'{where}: key {key!r} is missing; found {sorted(meta)}')
    return sources.as_array(meta[key], shape, where, key=key)

  image, (height, width) = sources.encodable_rgb(_rgb_path(base, frame), 'png')
  K = get('camMat', (3, 3))
  example = {
      'image': image,
      'K': K.astype(np.float32),
      'hand_side': 'right',
      'sequence': seq,
      'frame': frame,
  }
  if split == 'train':
    hand_pose, betas, hand_trans = (
        get('handPose', (48,)),
        get('handBeta', (10,)),
        get('handTrans', (3,)),
    )
    joints_gl = get('handJoints3D', (21, 3))
    joints = (joints_gl * FLIP)[HO3D_TO_21]
    verts_gl, _ = hands('right', hand_pose, betas, hand_trans, flat_hand_mean=True)
    verts = verts_gl * FLIP
    # Our pose convention: global rotation in the OpenCV frame, fingers relative to the mean hand.
    rest_root = hands.rest_root('right', betas)
    global_cv = sources.matrix_to_axis_angle(
        np.diag(FLIP) @ sources.axis_angle_to_matrix(hand_pose[:3])
    )
    hands_mean = np.asarray(hands.models['right'].hands_mean, np.float64)
    pose = np.concatenate([global_cv, hand_pose[3:] - hands_mean])
    trans_cv = FLIP * (rest_root + hand_trans) - rest_root
    example.update(
        joints_3d=joints.astype(np.float32),
        vertices_3d=verts.astype(np.float32),
        mano_pose=pose.astype(np.float32),
        mano_shape=betas.astype(np.float32),
        mano_trans=trans_cv.astype(np.float32),
        has_3d=True,
        root_joint=joints[0].astype(np.float32),
        ho3d_hand_pose=hand_pose.astype(np.float32),
        ho3d_hand_trans=hand_trans.astype(np.float32),
        bbox=sources.bbox_of_points(sources.project(joints, K)),
    )
  else:
    root_joint = get('handJoints3D', (3,)) * FLIP
    example.update(
        sources.empty_targets(),
        mano_trans=np.zeros(3, np.float32),
        has_3d=False,
        root_joint=root_joint.astype(np.float32),
        ho3d_hand_pose=np.zeros(48, np.float32),
        ho3d_hand_trans=np.zeros(3, np.float32),
        bbox=get('handBoundingBox', (4,)).astype(np.float32),
    )
  if with_depth:
    depth = read_depth(os.path.join(base, 'depth', f'{frame}.png'))
    if depth.shape != (height, width):
      raise sources.SourceError(
          f'{os.path.join(base, "depth", frame + ".png")}: depth is {depth.shape}, '
          f'the image is {(height, width)}'
      )
    example['depth'] = depth[..., None]
  return example
