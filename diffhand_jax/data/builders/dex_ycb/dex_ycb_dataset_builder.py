"""DexYCB (Chao et al. 2021), split S0, as a TFDS dataset in diffhand-jax's common schema (docs/design.md §7).

  DIFFHAND_MANO_DIR=/path/to/mano tfds build datasets/dex_ycb --manual_dir=/path/to/dex-ycb --data_dir=... \
      --file_format=array_record  # streamed by the input pipeline

S0 ("seen subjects, views and objects", the dex-ycb-toolkit's setup 's0'): the subjects are the folders named
`<yyyymmdd>-...` in date order (subject index 0..9 on the full release); each subject's sequences are sorted
by name and numbered i = 0, 1, ...:
  train       every subject, i % 5 != 4
  validation  subjects 0 and 1, i % 5 == 4
  test        subjects 2 and up, i % 5 == 4
Within a sequence the examples run camera by camera (serials sorted, as the toolkit's list) and frame by
frame (meta.yml's num_frames). Counts come from the files, so a partial copy builds too.

`sample_id` (int64) is the dex-ycb-toolkit's index of the sample, the image id of its HPE result file
(`hpe_eval.py` keys the ground truth by `i` in `for i in range(len(self._dataset))`). `DexYCBDataset`
(`dex_ycb_toolkit/dex_ycb.py`, __init__) lists, for the split, the subjects in `_SUBJECTS` order, each
one's sorted sequences picked by i % 5, and per sequence `np.meshgrid(frames, cameras)` raveled: cameras
(`_SERIALS`, all 8) outer, frames inner. The index counts every sample of the split in that order,
starting at 0 in each split, **before** any filtering, so the samples dropped below leave gaps:

  sample_id = (samples of the split's earlier sequences) + camera_index * num_frames + frame

It equals the toolkit's index when the copy is the full release (the toolkit asserts 100 sequences per
subject and uses its fixed subject and serial lists); on a partial copy it counts over what is there,
and the builder says so.

Filtering as HandOccNet: a label whose pose_m is all 0, or whose joint_3d or joint_2d is all -1, is
skipped; the counts per reason are printed. (HandOccNet's data_parsing/DEX_YCB.py drops a sample when all
three hold; the toolkit's hpe_eval.py evaluates every sample whose joint_3d is not all -1. joint_3d and
joint_2d come from pose_m, so the three are expected to coincide; any sample where they do not is
recorded, see below.) Left hands are kept, marked hand_side='left' and computed with MANO_LEFT; the input
pipeline mirrors them.

Each split's toolkit bookkeeping goes into the dataset's metadata (`builder.info.metadata['toolkit']`,
written to metadata.json): `full_release`, and per split `num_samples` (the toolkit's length),
`num_evaluated` (samples the toolkit scores), `num_kept`, and `evaluated_but_dropped` (ids the toolkit
scores that this filter dropped; a complete HPE result file needs a line for each, so
`diffhand_jax.submission` refuses to write an incomplete one).

Conversions: DexYCB is already in metres, the OpenCV camera frame, and the 21-order (manopth's). pose_m
holds 3 global + 45 PCA coefficients + 3 translation; the PCA part is expanded with MANO's
hands_components (manopth: ncomps=45, flat_hand_mean=False), so `mano_pose` is axis-angle with
flat_hand_mean=False and vertices_3d = MANO(mano_pose, betas) + trans. joints_3d is the label's joint_3d.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from diffhand_jax.data import sources

DEPTH_SCALE = 0.001  # aligned_depth_to_color png: millimetres
HAND_LABEL = 255  # the hand's value in the labels' seg map (0 background, 1-21 YCB objects)
SPLITS = ('train', 'validation', 'test')

# dex-ycb-toolkit's fixed lists (dex_ycb_toolkit/dex_ycb.py, _SUBJECTS and _SERIALS) and its assert of 100
# sequences per subject: a copy that matches them numbers its samples exactly as the toolkit does.
TOOLKIT_SUBJECTS = (
    '20200709-subject-01',
    '20200813-subject-02',
    '20200820-subject-03',
    '20200903-subject-04',
    '20200908-subject-05',
    '20200918-subject-06',
    '20200928-subject-07',
    '20201002-subject-08',
    '20201015-subject-09',
    '20201022-subject-10',
)
TOOLKIT_SERIALS = (
    '836212060125',
    '839512060362',
    '840412060917',
    '841412060263',
    '932122060857',
    '932122060861',
    '932122061900',
    '932122062010',
)
TOOLKIT_SEQUENCES_PER_SUBJECT = 100

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download DexYCB from https://dex-ycb.github.io (the *-subject-*.tar.gz archives and calibration.tar.gz)
and extract them into one folder, passed as --manual_dir:
  <subject>/<sequence>/meta.yml
  <subject>/<sequence>/<serial>/{color_%06d.jpg, aligned_depth_to_color_%06d.png, labels_%06d.npz}
  calibration/intrinsics/<serial>_640x480.yml, calibration/mano_<calib>/mano.yml
(the models/ folder of YCB meshes is not needed). The builder also needs MANO (MANO_RIGHT.pkl and
MANO_LEFT.pkl from https://mano.is.tue.mpg.de): set DIFFHAND_MANO_DIR=/path/to/folder, or pass
--config '{"name": "custom", "mano_dir": "/path/to/folder"}' (a json config needs a name other than
"default"; train with --config.dataset.config_name=custom).
"""


@dataclasses.dataclass(eq=False)
class DexYcbConfig(tfds.core.BuilderConfig):
  """`mano_dir`: folder with MANO_RIGHT.pkl / MANO_LEFT.pkl ('' = $DIFFHAND_MANO_DIR).
  `with_depth`: also store the aligned depth maps (uint16 millimetres)."""

  mano_dir: str = ''
  with_depth: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for DexYCB (S0 split)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': "sample_id: the dex-ycb-toolkit's sample index; the toolkit's counts in metadata.",
  }
  BUILDER_CONFIGS = [
      DexYcbConfig(name='default', description='S0 split, RGB frames and hand masks.')
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    features = sources.common_features('jpeg')
    tensor = tfds.features.Tensor
    features.update(
        {
            'mano_trans': tensor(
                shape=(3,),
                dtype=np.float32,
                doc='vertices_3d = mano.forward(mano_pose, mano_shape, flat_hand_mean=False) + mano_trans',
            ),
            'joints_2d': tensor(
                shape=(21, 2), dtype=np.float32, doc="the label's joint_2d, pixels"
            ),
            'mask': tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, doc='255 on the hand, 0 elsewhere'
            ),
            'dexycb_pose_m': tensor(
                shape=(51,), dtype=np.float32, doc='raw pose_m: global 3, PCA 45, trans 3'
            ),
            'object_id': tensor(
                shape=(), dtype=np.int64, doc='YCB id (1-21) of the grasped object'
            ),
            'subject': tfds.features.Text(),
            'sequence': tfds.features.Text(),
            'serial': tfds.features.Text(doc='camera serial'),
            'frame': tensor(shape=(), dtype=np.int64),
            'sample_id': tensor(
                shape=(),
                dtype=np.int64,
                doc="dex-ycb-toolkit's index in DexYCBDataset('s0', split), counted before filtering: "
                'the image id of an HPE result file',
            ),
        }
    )
    if self.builder_config.with_depth:
      features['depth'] = tfds.features.Image(
          shape=(None, None, 1),
          dtype=np.uint16,
          doc='millimetres (metres = value * 0.001); 0 = no reading',
      )
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        homepage='https://dex-ycb.github.io',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    mano_dir = sources.resolve_mano_dir(self.builder_config.mano_dir, 'dex_ycb')
    hands = sources.ManoEvaluator(mano_dir)
    sequences = s0_sequences(root)
    differences = differences_from_release(root)
    if differences:
      print(
          f'dex_ycb: {root} is not the full release ({"; ".join(differences)}): sample_id counts over '
          "this copy and equals the toolkit's index only on the full release",
          flush=True,
      )
    # Filled in as the splits are generated; TFDS writes it to metadata.json after generation.
    self.info.metadata['toolkit'] = {'full_release': not differences, 'splits': {}}
    return {
        split: self._generate_examples(root, split, sequences[split], hands) for split in SPLITS
    }

  def _generate_examples(
      self, root: str, split: str, sequences: list[str], hands: sources.ManoEvaluator
  ):
    skipped = collections.Counter()
    intrinsics_cache: dict = {}
    evaluated_but_dropped: list[int] = []
    first_id = kept = 0
    for sequence in sequences:
      for key, example in sequence_examples(
          root,
          sequence,
          hands,
          skipped,
          self.builder_config.with_depth,
          intrinsics_cache,
          first_id=first_id,
          evaluated_but_dropped=evaluated_but_dropped,
      ):
        kept += 1
        yield key, example
      first_id += sequence_sample_count(root, sequence)
    if skipped:
      details = ', '.join(f'{count} with {reason}' for reason, count in sorted(skipped.items()))
      print(
          f'dex_ycb: {split}: skipped {sum(skipped.values())} invalid label(s) ({details})',
          flush=True,
      )
    if evaluated_but_dropped:
      print(
          f'dex_ycb: {split}: {len(evaluated_but_dropped)} skipped sample(s) have a valid joint_3d, which the '
          f"toolkit's hpe_eval scores (sample_id {evaluated_but_dropped[:10]}); an HPE result file of this "
          'split cannot be complete',
          flush=True,
      )
    self.info.metadata['toolkit']['splits'][split] = {
        'num_samples': first_id,
        'num_evaluated': kept + len(evaluated_but_dropped),
        'num_kept': kept,
        'evaluated_but_dropped': evaluated_but_dropped,
    }


def subjects(root: str) -> list[str]:
  """Subject folders (named '<yyyymmdd>-...') in date order, which is the toolkit's subject order."""
  if not os.path.isdir(root):
    raise sources.SourceError(f'{root}: folder is missing (see MANUAL_DOWNLOAD_INSTRUCTIONS)')
  found = sorted(
      name
      for name in os.listdir(root)
      if re.fullmatch(r'\d{8}-.+', name) and os.path.isdir(os.path.join(root, name))
  )
  if not found:
    raise sources.SourceError(f'{root}: no subject folders (<yyyymmdd>-subject-NN) found')
  return found


def s0_sequences(root: str) -> dict[str, list[str]]:
  """{'train' | 'validation' | 'test': ['subject/sequence', ...]} of the S0 setup."""
  out = {split: [] for split in SPLITS}
  for subject_index, subject in enumerate(subjects(root)):
    folder = os.path.join(root, subject)
    sequences = sorted(
        name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))
    )
    for i, sequence in enumerate(sequences):
      if i % 5 != 4:
        split = 'train'
      else:
        split = 'validation' if subject_index < 2 else 'test'
      out[split].append(f'{subject}/{sequence}')
  return out


def differences_from_release(root: str) -> list[str]:
  """How the copy differs from what the toolkit's numbering assumes ([] = not at all): its subject list,
  100 sequences per subject, and its 8 cameras in every sequence (it never reads meta.yml's serials).
  """
  found = subjects(root)
  out = []
  if tuple(found) != TOOLKIT_SUBJECTS:
    out.append(f"{len(found)} subject folder(s), not the toolkit's {len(TOOLKIT_SUBJECTS)}")
  other_cameras = 0
  for subject in found:
    folder = os.path.join(root, subject)
    sequences = sorted(
        name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))
    )
    if len(sequences) != TOOLKIT_SEQUENCES_PER_SUBJECT:
      out.append(f'{subject} has {len(sequences)} sequences, not {TOOLKIT_SEQUENCES_PER_SUBJECT}')
    other_cameras += sum(
        tuple(sorted(str(s) for s in _read_meta(root, f'{subject}/{name}')['serials']))
        != TOOLKIT_SERIALS
        for name in sequences
    )
  if other_cameras:
    out.append(
        f"{other_cameras} sequence(s) list other cameras than the toolkit's {len(TOOLKIT_SERIALS)}"
    )
  return out


def _read_meta(root: str, sequence: str) -> dict:
  meta_path = os.path.join(root, sequence, 'meta.yml')
  meta = sources.load_yaml(meta_path)
  for key in ('serials', 'num_frames', 'mano_sides', 'mano_calib', 'ycb_ids', 'ycb_grasp_ind'):
    if key not in meta:
      raise sources.SourceError(f'{meta_path}: key {key!r} is missing')
  return meta


def sequence_sample_count(root: str, sequence: str) -> int:
  """The toolkit's number of samples in a sequence, filtered or not: cameras x frames."""
  meta = _read_meta(root, sequence)
  return len(meta['serials']) * int(meta['num_frames'])


def _intrinsics(root: str, serial: str, cache: dict) -> np.ndarray:
  if serial not in cache:
    path = os.path.join(root, 'calibration', 'intrinsics', f'{serial}_640x480.yml')
    colour = sources.load_yaml(path).get('color')
    if not isinstance(colour, dict) or not all(k in colour for k in ('fx', 'fy', 'ppx', 'ppy')):
      raise sources.SourceError(f"{path}: expected a 'color' entry with fx, fy, ppx, ppy")
    fx, fy, ppx, ppy = (float(colour[k]) for k in ('fx', 'fy', 'ppx', 'ppy'))
    cache[serial] = np.array([[fx, 0.0, ppx], [0.0, fy, ppy], [0.0, 0.0, 1.0]])
  return cache[serial]


def sequence_examples(
    root: str,
    sequence: str,
    hands: sources.ManoEvaluator,
    skipped: collections.Counter,
    with_depth: bool,
    intrinsics_cache: dict,
    *,
    first_id: int = 0,
    evaluated_but_dropped: list[int] | None = None,
):
  """(key, example) for every valid label of one sequence, camera by camera, frame by frame.

  `first_id`: the toolkit index of the sequence's first sample (camera 0, frame 0); sample (c, f) gets
  first_id + c * num_frames + f, filtered or not. Skipped samples that the toolkit's hpe_eval still scores
  (joint_3d not all -1) have their ids appended to `evaluated_but_dropped`.
  """
  meta_path = os.path.join(root, sequence, 'meta.yml')
  meta = _read_meta(root, sequence)
  side = str(meta['mano_sides'][0])
  if side not in ('right', 'left'):
    raise sources.SourceError(f"{meta_path}: mano_sides[0] is {side!r}, expected 'right' or 'left'")
  calib_path = os.path.join(root, 'calibration', f'mano_{meta["mano_calib"][0]}', 'mano.yml')
  betas = sources.as_array(
      sources.load_yaml(calib_path).get('betas'), (10,), calib_path, key='betas'
  )
  object_id = int(meta['ycb_ids'][int(meta['ycb_grasp_ind'])])
  subject, sequence_name = sequence.split('/')
  num_frames = int(meta['num_frames'])
  # The toolkit's np.meshgrid(frames, cameras).ravel(): camera-major, frame-minor.
  for camera_index, serial in enumerate(sorted(str(s) for s in meta['serials'])):
    K = _intrinsics(root, serial, intrinsics_cache)
    for frame in range(num_frames):
      sample_id = first_id + camera_index * num_frames + frame
      folder = os.path.join(root, sequence, serial)
      label_path = os.path.join(folder, f'labels_{frame:06d}.npz')
      label = _read_label(label_path)
      reason = invalid_reason(label)
      if reason:
        skipped[reason] += 1
        if evaluated_but_dropped is not None and toolkit_evaluates(label):
          evaluated_but_dropped.append(sample_id)
        continue
      yield f'{sequence}/{serial}/{frame}', make_example(
          folder,
          frame,
          label,
          label_path,
          K,
          side,
          betas,
          hands,
          with_depth,
          raw={
              'subject': subject,
              'sequence': sequence_name,
              'serial': serial,
              'frame': frame,
              'object_id': object_id,
              'sample_id': sample_id,
          },
      )


def _read_label(path: str) -> dict:
  sources.require_file(path, 'label file')
  try:
    with np.load(path, allow_pickle=False) as data:
      label = {key: data[key] for key in data.files}
  except Exception as err:  # noqa: BLE001 - zipfile / OSError / ValueError variants of a bad file
    raise sources.SourceError(
        f'{path}: not a readable npz (truncated or corrupt: {type(err).__name__}: ' f'{err})'
    ) from None
  for key in ('pose_m', 'joint_3d', 'joint_2d'):
    if key not in label:
      raise sources.SourceError(f'{path}: key {key!r} is missing; found {sorted(label)}')
  return label


def toolkit_evaluates(label: dict) -> bool:
  """Whether the toolkit's hpe_eval scores the sample (it skips a joint_3d that is all -1)."""
  return not np.all(np.asarray(label['joint_3d']) == -1)


def invalid_reason(label: dict) -> str:
  """The builder's filter (docs/design.md §7, after HandOccNet): '' when the label is usable."""
  if np.all(np.asarray(label['pose_m']) == 0):
    return 'all-zero pose_m'
  if np.all(np.asarray(label['joint_3d']) == -1):
    return 'all -1 joint_3d'
  if np.all(np.asarray(label['joint_2d']) == -1):
    return 'all -1 joint_2d'
  return ''


def make_example(
    folder: str,
    frame: int,
    label: dict,
    label_path: str,
    K: np.ndarray,
    side: str,
    betas: np.ndarray,
    hands: sources.ManoEvaluator,
    with_depth: bool,
    raw: dict,
) -> dict:
  pose_m = sources.as_array(label['pose_m'], (51,), label_path, key='pose_m')
  joints = sources.as_array(label['joint_3d'], (21, 3), label_path, key='joint_3d')
  joints_2d = sources.as_array(label['joint_2d'], (21, 2), label_path, key='joint_2d')
  # manopth with ncomps=45, flat_hand_mean=False: fingers = pca @ hands_components[:45] (+ hands_mean,
  # which forward adds because flat_hand_mean=False).
  components = np.asarray(hands.models[side].hands_components, np.float64)[:45]
  pose = np.concatenate([pose_m[:3], pose_m[3:48] @ components])
  trans = pose_m[48:51]
  verts, _ = hands(side, pose, betas, trans, flat_hand_mean=False)
  image_path = os.path.join(folder, f'color_{frame:06d}.jpg')
  image, (height, width) = sources.encodable_rgb(image_path, 'jpeg')
  if 'seg' in label:
    seg = np.asarray(label['seg'])
    if seg.shape != (height, width):
      raise sources.SourceError(
          f'{label_path}: seg is {seg.shape}, the image {image_path} is {(height, width)}'
      )
    mask = np.where(seg == HAND_LABEL, 255, 0).astype(np.uint8)[..., None]
  else:
    mask = np.zeros((height, width, 1), np.uint8)
  example = {
      'image': image,
      'K': K.astype(np.float32),
      'joints_3d': joints.astype(np.float32),
      'vertices_3d': verts.astype(np.float32),
      'mano_pose': pose.astype(np.float32),
      'mano_shape': betas.astype(np.float32),
      'mano_trans': trans.astype(np.float32),
      'has_3d': True,
      'hand_side': side,
      'bbox': sources.bbox_of_points(joints_2d),
      'joints_2d': joints_2d.astype(np.float32),
      'mask': mask,
      'dexycb_pose_m': pose_m.astype(np.float32),
      **raw,
  }
  if with_depth:
    depth_path = os.path.join(folder, f'aligned_depth_to_color_{frame:06d}.png')
    depth = sources.read_gray(depth_path, what='depth image')
    if depth.shape != (height, width):
      raise sources.SourceError(
          f'{depth_path}: depth is {depth.shape}, the image is {(height, width)}'
      )
    example['depth'] = np.clip(depth, 0, 65535).astype(np.uint16)[..., None]
  return example
